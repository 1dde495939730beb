"""Every registered method on the real MiniLM encoder and real SST-2 sentences."""

import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from lorabench.execution.evaluate import evaluate
from lorabench.execution.inference import model_inputs
from lorabench.execution.settings import TrainingSettings
from lorabench.execution.trainer import RunId, train
from lorabench.loading.data import Collator
from lorabench.loading.models import ModelLoader
from lorabench.methods import METHODS, build_method, count_parameters
from lorabench.methods.adapter_stats import adapter_weights, sparsity_report
from lorabench.runtime.device import seed_everything

from conftest import MINILM, SNAPSHOTS

CPU = torch.device("cpu")
SETTINGS = TrainingSettings(epochs=8, batch_size=16, grad_accum_steps=1, warmup_ratio=0.0, weight_decay=0.0,
                            max_grad_norm=1.0, subset_seed=0)
PARAMS = {
    "lora": {"lr": 2e-3, "r": 4, "alpha": 8, "dropout": 0.0},
    "sparse_lora_l1": {"lr": 2e-3, "r": 4, "alpha": 8, "dropout": 0.0, "l1_weight": 1e-2, "zero_threshold": 1e-3},
    "sparse_lora_magnitude": {"lr": 2e-3, "r": 4, "alpha": 8, "dropout": 0.0, "sparsity": 0.6,
                              "prune_start_frac": 0.0, "prune_end_frac": 0.5},
    "sparse_lora_structured": {"lr": 2e-3, "r": 4, "alpha": 8, "dropout": 0.0, "sparsity": 0.5,
                               "prune_start_frac": 0.0, "prune_end_frac": 0.5},
    "qlora": {"lr": 2e-3, "r": 4, "alpha": 8, "dropout": 0.0},
    "sparselora": {"lr": 2e-3, "r": 4, "alpha": 8, "dropout": 0.0, "ffn_sparsity": 0.75, "warmup_frac": 0.25},
    "hira": {"lr": 2e-2, "r": 4, "dropout": 0.0},
    "adalora": {"lr": 2e-3, "alpha": 8, "dropout": 0.0, "init_r": 6, "target_r": 2},
    "peft": {"lr": 5e-3, "peft_config": {"peft_type": "LOHA", "r": 4, "alpha": 8}},  # any PEFT method: LoHa here
    "full_ft": {"lr": 5e-5},
}


@pytest.fixture(scope="module")
def loader():
    return ModelLoader(MINILM, "classification", 2)


@pytest.fixture(scope="module")
def collator():
    return Collator(AutoTokenizer.from_pretrained(MINILM))


@pytest.fixture(scope="module")
def rows():
    df = pd.read_parquet(SNAPSHOTS / "datasets/stanfordnlp/sst2/data/validation-00000-of-00001.parquet").head(16)
    tok = AutoTokenizer.from_pretrained(MINILM)
    ids = tok(list(df["sentence"]), truncation=True, max_length=32)["input_ids"]
    return [{"example_id": i, "input_ids": x, "labels": int(y)} for i, (x, y) in enumerate(zip(ids, df["label"]))]


def _build(name, loader, seed=0):
    seed_everything(seed)
    method = build_method(name, PARAMS[name], loader.target_modules)
    return method, method.build(loader)


def _train(method, model, rows, collator, settings=SETTINGS):
    return train(model, method, rows, collator, settings, method.params["lr"], 0, CPU, RunId(method.name, "sst2", 0))


def test_every_registered_method_is_tested():
    assert set(PARAMS) | {"base"} == set(METHODS)  # base trains nothing: its own test below


def test_untrained_base_trains_nothing_and_evaluates_the_pretrained_model(loader, rows, collator, tmp_path):
    from lorabench.execution.trainer import untrained_metrics

    method = build_method("base", {}, loader.target_modules)
    model = method.build(loader).eval()
    assert not method.trains and count_parameters(model, loader.head_modules)["trainable_params"] == 0
    metrics = untrained_metrics(model)
    assert metrics["train_steps"] == 0 and metrics["loss_curve"] == [] and math.isnan(metrics["peak_train_mem_mb"])
    method.save(model, tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))  # a pointer to the base, not a copy of it
    batch = collator(rows[:4])
    with torch.no_grad():
        reloaded = method.load_trained(loader, tmp_path).eval()
        # the encoder and the pooler are the checkpoint's; only the fresh classifier head differs per load
        assert torch.equal(model.bert(input_ids=batch["input_ids"]).last_hidden_state,
                           reloaded.bert(input_ids=batch["input_ids"]).last_hidden_state)
    with pytest.raises(FileNotFoundError, match="base"):
        method.load_trained(loader, tmp_path / "elsewhere")


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_method_trains_and_lowers_the_loss(name, loader, rows, collator):
    method, model = _build(name, loader)
    result = _train(method, model, rows, collator)
    curve = [p["loss"] for p in result["loss_curve"]]
    assert result["train_steps"] == 8
    assert sum(curve[-2:]) / 2 < curve[0] - 0.01, curve
    counts = count_parameters(model, loader.head_modules)
    assert counts["head_params"] == 384 * 2 + 2  # the classifier always trains, counted apart
    if name == "full_ft":
        assert counts["trainable_params"] == counts["total_params"] and counts["adapter_params"] == 0
    else:
        assert 0 < counts["adapter_params"] < counts["total_params"] / 20 and counts["other_trainable_params"] == 0


def test_qlora_base_is_nf4_with_double_quant_and_survives_eval_then_train(loader, rows, collator):
    import bitsandbytes as bnb

    method, model = _build("qlora", loader)
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 6 * 6 + 1  # 6 layers x (q, k, v, attn-out, intermediate, output) + pooler
    for m in linear4:
        state = m.weight.quant_state
        assert state.quant_type == "nf4" and state.nested  # double quantization: quantized absmax
        assert m.support_avx512bf16_for_cpu is False
    assert type(model.base_model.model.classifier.modules_to_save["default"]) is torch.nn.Linear  # head not 4-bit
    assert method.report(model)["base_weight_bits"] == 4
    evaluate(model, rows, collator, "classification", None, 8, 0, CPU)  # an eval forward first ...
    result = _train(method, model, rows, collator, replace(SETTINGS, epochs=2))  # ... then training still works
    assert result["train_steps"] == 2
    assert "PagedAdamW" in method.report(model)["optimizer"]


def test_magnitude_pruning_hits_target_and_pruned_weights_stay_zero(loader, rows, collator):
    method, model = _build("sparse_lora_magnitude", loader)
    _train(method, model, rows, collator)
    assert abs(sparsity_report(model)["adapter_sparsity"] - 0.6) < 0.01
    zero_masks = [(w == 0).clone() for w in adapter_weights(model)]
    _train(method, model, rows, collator, replace(SETTINGS, epochs=3))  # more optimizer steps
    for w, was_zero in zip(adapter_weights(model), zero_masks):
        assert (w[was_zero] == 0).all()


def test_structured_pruning_removes_whole_rank_components(loader, rows, collator):
    method, model = _build("sparse_lora_structured", loader)
    _train(method, model, rows, collator)
    report = sparsity_report(model)
    assert abs((1 - report["live_rank_components"]) - 0.5) < 0.01
    assert report["effective_rank"] < 4  # pruned components lower the rank of B A
    assert method.report(model)["adapter_sparsity"] > 0.3


@pytest.mark.parametrize("shape", [(384, 8, 384), (1536, 8, 576), (576, 4, 1536)])
def test_adapter_rank_from_the_factors_equals_the_rank_of_the_product(shape):
    from lorabench.methods.adapter_stats import _product_rank

    out, r, inp = shape
    gen = torch.Generator().manual_seed(out + inp)
    for live in range(r + 1):  # components zeroed as structured pruning does, and a tiny but real one
        b, a = torch.randn(out, r, generator=gen), torch.randn(r, inp, generator=gen)
        b[:, live:] = 0
        if live:
            a[0] *= 1e-3
        full = int(torch.linalg.matrix_rank(b @ a))
        assert _product_rank(b, a) == full == live


def test_l1_penalty_makes_adapters_sparser_than_plain_lora(loader, rows, collator):
    sparsities = {}
    for name in ("lora", "sparse_lora_l1"):
        method, model = _build(name, loader)
        _train(method, model, rows, collator)
        sparsities[name] = method.report(model)["adapter_sparsity"]
    assert sparsities["sparse_lora_l1"] > sparsities["lora"] + 0.05


def _logits(model, rows, collator):
    model.eval()
    with torch.no_grad():
        return model(**model_inputs(collator, rows, torch.device("cpu"))).logits


@pytest.mark.parametrize("option", ["use_dora", "use_rslora"])
def test_lora_options_reach_peft_train_and_merge(option, loader, rows, collator):
    seed_everything(0)
    method = build_method("lora", {**PARAMS["lora"], option: True}, loader.target_modules)
    model = method.build(loader)
    layer = next(m for m in model.modules() if "default" in getattr(m, "lora_A", {}))
    if option == "use_dora":
        assert layer.use_dora["default"]
        assert any("lora_magnitude_vector" in n for n, p in model.named_parameters() if p.requires_grad)
    else:
        assert layer.scaling["default"] == pytest.approx(PARAMS["lora"]["alpha"] / PARAMS["lora"]["r"] ** 0.5)
    result = _train(method, model, rows, collator, replace(SETTINGS, epochs=4))
    curve = [p["loss"] for p in result["loss_curve"]]
    assert curve[-1] < curve[0], curve
    model.eval()
    batch = model_inputs(collator, rows[:4], CPU)
    with torch.no_grad():
        before = model(**batch).logits
        after = model.merge_and_unload()(**batch).logits
    assert torch.allclose(before, after, atol=1e-4)


@pytest.mark.parametrize("name", ["lora", "hira"])
def test_fresh_adapter_is_identity_and_merge_matches(name, loader, rows, collator):
    seed_everything(0)
    base_logits = _logits(loader.load(), rows, collator)
    method, model = _build(name, loader)
    assert torch.equal(_logits(model, rows, collator), base_logits)  # zero-initialized B: exactly the base
    _train(method, model, rows, collator, replace(SETTINGS, epochs=3))
    unmerged = _logits(model, rows, collator)
    assert not torch.allclose(unmerged, base_logits)
    merged = _logits(model.merge_and_unload(), rows, collator)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-4)  # stated tolerance: 1e-4 on logits


@pytest.mark.parametrize("name", ["lora", "hira", "qlora", "sparse_lora_magnitude", "full_ft"])
def test_saved_model_reloads_and_reproduces_its_metric(name, loader, rows, collator, tmp_path):
    method, model = _build(name, loader)
    _train(method, model, rows, collator, replace(SETTINGS, epochs=3))
    before, _ = evaluate(model, rows, collator, "classification", None, 8, 0, CPU)
    logits_before = _logits(model, rows, collator)
    method.save(model, tmp_path)
    if method.saves_adapter:
        assert (tmp_path / "adapter_model.safetensors").exists()
    reloaded = method.load_trained(loader, tmp_path)  # PeftModel.from_pretrained for adapters
    if method.saves_adapter:
        from peft import PeftModel

        assert isinstance(reloaded, PeftModel)
    after, _ = evaluate(reloaded, rows, collator, "classification", None, 8, 0, CPU)
    assert after["accuracy"] == before["accuracy"]
    torch.testing.assert_close(_logits(reloaded, rows, collator), logits_before, rtol=0, atol=1e-5)
