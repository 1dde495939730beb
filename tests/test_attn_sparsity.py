"""SparseLoRA's contextual attention sparsity: the narrowed attention is exact (every channel kept equals LoRA; a
fixed set of kept channels equals dense attention with the others zeroed, rotary pairs and grouped-query heads
included), the predictor's q/k and v channels beat chance, eval runs the original code, and the method trains
with it and refuses it where an architecture has no map. Real MiniLM on real SST-2 sentences; a random tiny
Llama (rotary, grouped-query) for the other map."""

import pytest
import torch
from test_sparselora import (LORA, assert_checkpointing_recomputes_the_same_channels, assert_same_step,
                             half_sparse_case, random_batch, sst2_batch, step)

from lorabench.loading.models import ModelLoader
from lorabench.methods import build_method
from lorabench.methods.sparselora.attention import AttnSparsity, kept_per_head
from lorabench.methods.sparselora.channels import submodule
from lorabench.methods.sparselora.ffn import FFN_MAPS, find_blocks
from lorabench.methods.sparselora.predictors import compute_predictors
from lorabench.runtime.device import seed_everything

from conftest import MINILM


@pytest.fixture(params=["bert", "llama"])
def case(request, tiny_llama):
    """(LoRA model with non-zero adapters, its AttnSparsity at 50% on every layer, a batch with padding)."""
    model, sparsity, batch = half_sparse_case(request.param, AttnSparsity, tiny_llama)
    yield model, sparsity, batch
    sparsity.remove()


def channel_mask(keep: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """A (heads * head_dim) 0/1 mask with ``keep[h]`` set in head h."""
    return torch.zeros(heads, head_dim).scatter_(1, keep, 1.0).reshape(-1)


def test_every_channel_kept_equals_plain_lora(case):
    model, sparsity, batch = case
    dense = step(model, sparsity, batch, sparse=False)
    n_q, n_kv, head_dim = sparsity.heads
    every = torch.arange(head_dim).expand(n_kv, head_dim)
    sparsity.force_channels = {i: (every, every) for i in range(len(sparsity.blocks))}
    assert_same_step(step(model, sparsity, batch, sparse=True), dense)


def test_gradient_checkpointing_recomputes_the_channels_the_forward_chose(case):
    assert_checkpointing_recomputes_the_same_channels(*case)


def test_narrowed_attention_equals_dense_with_the_other_channels_zeroed(case):
    """For fixed kept channels (rotary pairs together; one set per key/value head, shared by its query heads),
    outputs and gradients, the q/k/v/o adapters' included, equal the dense model whose q, k and v outputs are
    zero outside them."""
    model, sparsity, batch = case
    n_q, n_kv, head_dim = sparsity.heads
    group, half, gen = n_q // n_kv, head_dim // 2, torch.Generator().manual_seed(0)
    forced, hooks = {}, []
    for i, block in enumerate(sparsity.blocks):
        if sparsity.amap.rope:
            first = torch.stack([torch.randperm(half, generator=gen)[: half // 3].sort().values
                                 for _ in range(n_kv)])
            qk = torch.cat([first, first + half], dim=1)
        else:
            qk = torch.stack([torch.randperm(head_dim, generator=gen)[: head_dim // 3].sort().values
                              for _ in range(n_kv)])
        v = torch.stack([torch.randperm(head_dim, generator=gen)[: qk.shape[1]].sort().values for _ in range(n_kv)])
        forced[i] = (qk, v)
        for path, mask in ((sparsity.amap.q, channel_mask(qk.repeat_interleave(group, 0), n_q, head_dim)),
                           (sparsity.amap.k, channel_mask(qk, n_kv, head_dim)),
                           (sparsity.amap.v, channel_mask(v, n_kv, head_dim))):
            hooks.append(submodule(block, path).register_forward_hook(lambda m, args, out, mask=mask: out * mask))
    sparsity.force_channels = forced
    narrowed = step(model, sparsity, batch, sparse=True)
    zeroed = step(model, sparsity, batch, sparse=False)
    for h in hooks:
        h.remove()
    unmasked_logits, _ = step(model, sparsity, batch, sparse=False)
    assert not torch.allclose(unmasked_logits, zeroed[0], atol=1e-4)  # the zeroing matters
    assert_same_step(narrowed, zeroed)
    adapted = {sparsity.amap.q.split(".")[-1], sparsity.amap.v.split(".")[-1], sparsity.amap.o.split(".")[-1]}
    assert all(any(name in n and "lora_B" in n for n in narrowed[1]) for name in adapted)


def test_eval_mode_and_dense_layers_use_the_original_forward(case):
    model, sparsity, batch = case
    n_q, n_kv, _ = sparsity.heads
    two = torch.arange(2).expand(n_kv, 2)
    sparsity.force_channels = {i: (two, two) for i in range(len(sparsity.blocks))}  # drastic if used
    model.eval()
    with torch.no_grad():
        sparse_eval = model(**batch).logits
        sparsity.sparse = False
        dense_eval = model(**batch).logits
    assert torch.equal(sparse_eval, dense_eval)


def test_predicted_channels_beat_chance_against_the_true_norms():
    """On MiniLM and real sentences, the predictor's v channels per head overlap the channels with the largest
    true v norm (one dense forward) well above the 1 - sparsity a random choice scores, and its q/k channels
    keep nearly as much of the true |q||k| product as the best choice, more than a random one."""
    seed_everything(0)
    model = ModelLoader(MINILM, "classification", 2).load()
    sentences = {k: v for k, v in sst2_batch(80).items() if k != "labels"}
    batch = {k: v[:16] for k, v in sentences.items()}
    calibration = [{k: v[16 + 16 * i: 32 + 16 * i] for k, v in sentences.items()} for i in range(4)]
    n_layers = len(find_blocks(model, FFN_MAPS["bert"]))
    sparsity = AttnSparsity(model, "bert", [0.75] * n_layers, compute_predictors(model, "bert", 16, calibration))
    outputs, hooks = {}, []
    for i, block in enumerate(sparsity.blocks):
        hooks.append(submodule(block, "attention.self").register_forward_pre_hook(
            lambda m, args, kwargs, i=i: outputs.__setitem__(i, args[0].detach()), with_kwargs=True))
        for name in "qkv":
            hooks.append(submodule(block, getattr(sparsity.amap, name)).register_forward_hook(
                lambda m, args, out, i=i, name=name: outputs.__setitem__((i, name), out.detach())))
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    n_q, n_kv, head_dim = sparsity.heads
    kept = kept_per_head(head_dim, 0.75)
    real = batch["attention_mask"].bool()
    v_overlap, qk_share, oracle_share = [], [], []
    for i in range(n_layers):
        norm = {n: outputs[(i, n)][real].norm(dim=0).view(n_kv, head_dim) for n in "qkv"}
        qk, v = sparsity.select(i, outputs[i])
        oracle_v = torch.topk(norm["v"], kept, dim=1).indices
        v_overlap.append(sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(v, oracle_v)) / (n_kv * kept))
        product = norm["q"] * norm["k"]
        qk_share.append((product.gather(1, qk).sum() / product.sum()).item())
        oracle_share.append((torch.topk(product, kept, dim=1).values.sum() / product.sum()).item())
    sparsity.remove()
    # Measured: v overlap 0.69-0.83; the q/k product is flat across channels, so even the oracle's choice keeps
    # only 0.35-0.39 of it (a random one 0.25), and the predictor's keeps 99% of what the oracle's does.
    assert min(v_overlap) > 0.25 + 0.3, v_overlap
    for share, best in zip(qk_share, oracle_share):
        assert share > 0.95 * best and share > 0.25 + 0.08, (qk_share, oracle_share)


def test_sparselora_trains_with_attention_sparsity_and_reports_it(tiny_llama):
    loader = ModelLoader(tiny_llama, "language_modeling", 2)
    seed_everything(0)
    method = build_method("sparselora", {**LORA, "ffn_sparsity": 0.5, "attn_sparsity": 0.5, "dense_layers": [0],
                                         "warmup_frac": 0.0, "predictor_rank": 4}, loader.target_modules)
    model = method.build(loader)
    model.train()
    method.on_train_start(model, 0, 4, lambda: None)
    assert method.attn_sparsity is not None and method.attn_sparsity.sparse
    batch = random_batch(1000, "language_modeling")
    with method.computing("dense"):
        dense = model(**batch).logits.detach()
        assert not method.attn_sparsity.sparse
    sparse = model(**batch)
    sparse.loss.backward()
    assert not torch.allclose(sparse.logits.detach(), dense, atol=1e-4)  # the sparse step computes less
    method.finalize(model)
    report = method.report(model)
    assert report["attn_sparse_layers"] == 3 and report["attn_sparsity_mean"] == pytest.approx(0.375)
    assert report["attn_matmul_fraction"] == pytest.approx((1 + 3 * kept_per_head(16, 0.5) / 16) / 4)
    with torch.no_grad():
        model.eval()
        after = model(**batch).logits
    assert not any("forward" in vars(b.self_attn) for b in find_blocks(model.get_base_model(), FFN_MAPS["llama"]))
    assert torch.isfinite(after).all()


def test_an_architecture_without_an_attention_map_is_refused(tiny_distilbert):
    model = ModelLoader(tiny_distilbert, "classification", 2).load()
    with pytest.raises(ValueError, match="no attention channel map for architecture 'distilbert'"):
        AttnSparsity(model, "distilbert", [0.5, 0.5], {})
