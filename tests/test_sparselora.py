"""SparseLoRA's contextual FFN sparsity: the narrowed path is exact, the predictor beats chance, training runs a
dense warm-up then sparse steps and counts what it computed. Real MiniLM on real SST-2 sentences; random tiny
Llama and DistilBERT for the other channel maps."""

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from lorabench.execution.settings import TrainingSettings
from lorabench.execution.trainer import RunId, enable_gradient_checkpointing, train
from lorabench.loading.data import Collator
from lorabench.loading.models import ModelLoader
from lorabench.methods import build_method
from lorabench.methods.sparselora.channels import kept_channels, linear_parts, submodule
from lorabench.methods.sparselora.ffn import FFN_MAPS, FFNSparsity, find_blocks
from lorabench.methods.sparselora.predictors import compute_predictors
from lorabench.methods.sparselora.settings import layer_sparsities
from lorabench.runtime.device import seed_everything

from conftest import MINILM, SNAPSHOTS

CPU = torch.device("cpu")
LORA = {"lr": 2e-3, "r": 4, "alpha": 8, "dropout": 0.0}


def sst2_batch(n: int = 16) -> dict:
    df = pd.read_parquet(SNAPSHOTS / "datasets/stanfordnlp/sst2/data/train-00000-of-00001.parquet").head(n)
    tok = AutoTokenizer.from_pretrained(MINILM)
    batch = dict(tok(list(df["sentence"]), padding=True, truncation=True, max_length=48, return_tensors="pt"))
    batch["labels"] = torch.tensor(df["label"].to_numpy())
    return batch


def random_batch(vocab: int, task: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padding in one example
    labels = torch.tensor([0, 1, 1, 0]) if task == "classification" else ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lora_with_live_adapters(arch: str, folder, task: str):
    """(LoRA model in train mode whose adapters are non-zero, a batch with padding) of one architecture."""
    loader = ModelLoader(folder, task, 2)
    seed_everything(0)
    model = build_method("lora", LORA, loader.target_modules).build(loader)
    with torch.no_grad():  # B starts at zero; make the adapters matter so their gradients are checked
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.train()
    vocab = model.get_base_model().config.vocab_size
    return model, sst2_batch(8) if arch == "bert" else random_batch(vocab, task)


def half_sparse_case(arch: str, sparsity_class, tiny_llama=None, tiny_distilbert=None):
    """(LoRA model with non-zero adapters, ``sparsity_class`` at 50% on every layer with rank-4 predictors, a
    batch) on MiniLM ("bert") or a tiny random Llama or DistilBERT."""
    folder, task = {"bert": (MINILM, "classification"), "llama": (tiny_llama, "language_modeling"),
                    "distilbert": (tiny_distilbert, "classification")}[arch]
    model, batch = lora_with_live_adapters(arch, folder, task)
    base = model.get_base_model()
    n_layers = len(find_blocks(base, FFN_MAPS[arch]))
    return model, sparsity_class(base, arch, [0.5] * n_layers, compute_predictors(base, arch, 4)), batch


@pytest.fixture(params=["bert", "llama", "distilbert"])
def case(request, tiny_llama, tiny_distilbert):
    """(LoRA model with non-zero adapters, its FFNSparsity at 50% on every layer, a batch)."""
    model, sparsity, batch = half_sparse_case(request.param, FFNSparsity, tiny_llama, tiny_distilbert)
    yield model, sparsity, batch
    sparsity.remove()


def step(model, sparsity, batch, sparse: bool):
    """Logits and the trainable parameters' gradients of one forward+backward (dropout draws fixed)."""
    sparsity.sparse = sparse
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return out.logits.detach(), grads


def assert_same_step(got, want) -> None:
    """Two ``step`` results agree: logits and every trainable gradient, the adapters' among them."""
    (logits, grads), (ref_logits, ref_grads) = got, want
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        assert torch.allclose(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4), name


def assert_checkpointing_recomputes_the_same_channels(model, sparsity, batch) -> None:
    """The backward pass's recomputation asks the predictor again: it must pick the same channels, so outputs
    and gradients equal the run without checkpointing."""
    plain = step(model, sparsity, batch, sparse=True)
    enable_gradient_checkpointing(model)
    assert model.get_base_model().is_activation_checkpointing
    assert_same_step(step(model, sparsity, batch, sparse=True), plain)


def test_narrowed_ffn_with_every_channel_equals_plain_lora(case):
    model, sparsity, batch = case
    dense = step(model, sparsity, batch, sparse=False)
    sparsity.force_channels = {i: torch.arange(w) for i, w in enumerate(sparsity.widths)}
    assert_same_step(step(model, sparsity, batch, sparse=True), dense)


def test_gradient_checkpointing_recomputes_the_channels_the_forward_chose(case):
    """training.gradient_checkpointing is on for WikiText-2 in config.yaml."""
    assert_checkpointing_recomputes_the_same_channels(*case)


def test_narrowed_ffn_equals_dense_with_the_other_channels_masked(case):
    """For a fixed set of kept channels, outputs and gradients (adapters of the FFN too) equal the dense model
    whose FFN hidden activation is zeroed outside those channels."""
    model, sparsity, batch = case
    gen = torch.Generator().manual_seed(0)
    kept = {i: torch.randperm(w, generator=gen)[: w // 3].sort().values for i, w in enumerate(sparsity.widths)}
    sparsity.force_channels = kept
    logits, grads = step(model, sparsity, batch, sparse=True)
    hooks = []
    for i, block in enumerate(sparsity.blocks):
        mask = torch.zeros(sparsity.widths[i])
        mask[kept[i]] = 1.0
        down = submodule(block, sparsity.fmap.down)
        hooks.append(down.register_forward_pre_hook(lambda module, args, mask=mask: (args[0] * mask,)))
    ref_logits, ref_grads = step(model, sparsity, batch, sparse=False)
    for h in hooks:
        h.remove()
    unmasked_logits, _ = step(model, sparsity, batch, sparse=False)
    assert not torch.allclose(unmasked_logits, ref_logits, atol=1e-4)  # the masking matters
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    ffn_adapters = [n for n in grads if "lora_B" in n and sparsity.fmap.ups[0].split(".")[-1] in n]
    assert ffn_adapters, "the FFN's own adapters must be among the checked gradients"
    for name in grads:
        assert torch.allclose(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4), name


def test_eval_mode_and_dense_layers_use_the_original_forward(case):
    model, sparsity, batch = case
    sparsity.force_channels = {i: torch.arange(3) for i in range(len(sparsity.widths))}  # drastic if used
    model.eval()
    with torch.no_grad():
        sparse_eval = model(**batch).logits
        sparsity.sparse = False
        dense_eval = model(**batch).logits
    assert torch.equal(sparse_eval, dense_eval)


def test_predictor_scores_are_the_norm_over_real_tokens_and_bf16_keeps_their_ranking(case):
    """The predictor's score of a channel is the L2 norm, over the batch's real tokens, of the hidden activation
    through the rank-r factors: equal to an fp32 reference computed tokens by channels with padding dropped, and
    under bf16 autocast (how training runs on CPUs with bf16) the kept channels are nearly the same."""
    model, sparsity, batch = case
    inputs, _ = sparsity._dense_capture(model, {k: v for k, v in batch.items() if k != "labels"})
    real = batch["attention_mask"].reshape(-1).bool()
    assert not real.all()  # the batch has padding, so dropping it is checked
    for i, x in inputs.items():
        block, tokens = sparsity.blocks[i], x.float().reshape(-1, x.shape[-1])[real]
        pre = []
        for path, (a, b) in zip(sparsity.fmap.ups, sparsity.predictors[i]):
            bias = linear_parts(submodule(block, path))[0].bias
            pre.append(tokens @ a @ b + (0 if bias is None else bias))
        reference = sparsity.fmap.hidden(block, pre).norm(dim=0)
        torch.testing.assert_close(sparsity.predicted_scores(i, x), reference, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = sparsity.predicted_scores(i, x)
        k = kept_channels(sparsity.widths[i], 0.5)
        same = set(low.topk(k).indices.tolist()) & set(reference.topk(k).indices.tolist())
        assert len(same) / k > 0.9


def test_predictor_picks_the_heavy_channels_far_more_often_than_chance():
    """MiniLM on real SST-2 sentences at 75% sparsity, rank 16: overlap with the oracle's top-k channels and
    the share of the activation's energy kept, for the calibrated predictor (fitted on other sentences) and the
    paper's weight-only SVD, against chance."""
    loader = ModelLoader(MINILM, "classification", 2)
    seed_everything(0)
    model = build_method("lora", LORA, loader.target_modules).build(loader)
    base = model.get_base_model()
    sparsities = layer_sparsities({"ffn_sparsity": 0.75}, 6)
    batch = sst2_batch(80)
    measured, calibration = ({k: v[:16] for k, v in batch.items() if k != "labels"},
                             [{k: v[16 + 16 * i: 32 + 16 * i] for k, v in batch.items() if k != "labels"}
                              for i in range(4)])
    quality = {}
    for kind, calib in (("calibrated", calibration), ("svd", None)):
        sparsity = FFNSparsity(base, "bert", sparsities, compute_predictors(base, "bert", 16, calib))
        quality[kind] = sparsity.predictor_quality(model, measured)
        sparsity.remove()
    assert sorted(quality["svd"]) == [1, 2, 3, 4]  # first and last layers dense by default
    chance = 1 - 0.75
    for i, q in quality["calibrated"].items():
        # Measured: 0.53-0.65 overlap and 0.85-0.89 of the oracle's energy; the weight-only SVD 0.31-0.37 and
        # 0.44-0.77 (a random choice keeps 0.35-0.46).
        assert q["overlap"] > chance + 0.2 and q["mass"] > max(q["random_mass"] + 0.25, 0.75)
        assert quality["svd"][i]["overlap"] > chance and q["overlap"] > quality["svd"][i]["overlap"] + 0.1


def test_sparselora_trains_dense_then_sparse_and_counts_the_flops_it_did():
    loader = ModelLoader(MINILM, "classification", 2)
    df = pd.read_parquet(SNAPSHOTS / "datasets/stanfordnlp/sst2/data/validation-00000-of-00001.parquet").head(32)
    tok = AutoTokenizer.from_pretrained(MINILM)
    ids = tok(list(df["sentence"]), truncation=True, max_length=32)["input_ids"]
    rows = [{"example_id": i, "input_ids": x, "labels": int(y)} for i, (x, y) in enumerate(zip(ids, df["label"]))]
    settings = TrainingSettings(epochs=2, batch_size=8, grad_accum_steps=1, warmup_ratio=0.0, weight_decay=0.0,
                                max_grad_norm=1.0, subset_seed=0)
    results = {}
    for name, params in (("lora", LORA), ("sparselora", {**LORA, "ffn_sparsity": 0.75, "warmup_frac": 0.25,
                                                          "predictor_rank": 8})):
        seed_everything(0)
        method = build_method(name, params, loader.target_modules)
        model = method.build(loader)
        results[name] = train(model, method, rows, Collator(tok), settings, params["lr"], 0, CPU,
                              RunId(name, "sst2", 0))
        results[name]["report"] = method.report(model)
        blocks = [m for m in model.modules() if hasattr(m, "intermediate")]
        assert blocks and not any("feed_forward_chunk" in vars(b) for b in blocks)  # plain LoRA again
    lora, sparse = results["lora"], results["sparselora"]
    assert sparse["train_steps"] == 8
    assert set(sparse["train_tokens_by_phase"]) == {"dense", "sparse"}
    dense_tokens, sparse_tokens = sparse["train_tokens_by_phase"]["dense"], sparse["train_tokens_by_phase"]["sparse"]
    assert 0 < dense_tokens < sparse_tokens  # 2 warm-up steps of 8
    per_token = sparse["train_flops_per_token"]
    assert per_token["sparse"] < 0.9 * per_token["dense"]
    assert per_token["dense"] == pytest.approx(lora["train_flops_per_token"]["dense"], rel=1e-6)
    assert sparse["train_flops"] == pytest.approx(per_token["dense"] * dense_tokens + per_token["sparse"] * sparse_tokens)
    assert sparse["train_flops"] < lora["train_flops"]
    report = sparse["report"]
    assert report["ffn_sparse_layers"] == 4 and report["dense_warmup_steps"] == 2
    assert report["ffn_matmul_fraction"] == pytest.approx((2 + 4 * kept_channels(1536, 0.75) / 1536) / 6)
    assert sparse["final_train_loss"] < sparse["first_train_loss"]


def test_layer_sparsities_and_their_refusals():
    assert layer_sparsities({"ffn_sparsity": 0.9}, 4) == [0.0, 0.9, 0.9, 0.0]
    assert layer_sparsities({"ffn_sparsity": 0.5, "dense_layers": [1]}, 3) == [0.5, 0.0, 0.5]
    assert layer_sparsities({"ffn_sparsity": [0.1, 0.2, 0.3], "dense_layers": []}, 3) == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="dense_layers: index 4"):
        layer_sparsities({"ffn_sparsity": 0.5, "dense_layers": [4]}, 4)
    with pytest.raises(ValueError, match="ffn_sparsity: 2 values"):
        layer_sparsities({"ffn_sparsity": [0.5, 0.5]}, 4)
    assert set(FFN_MAPS) >= {"bert", "distilbert", "llama"}
