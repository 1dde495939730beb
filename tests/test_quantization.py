"""The quantize axis on the real MiniLM encoder and real bitsandbytes: every adapter type on a 4- or 8-bit
base, the hybrids the brief asks for (QHiRA, sparse QLoRA) and the merge error a quantized base reports."""

from dataclasses import replace

import pytest
import torch

from lorabench.loading.quantization import merge_error
from lorabench.methods import build_method
from lorabench.methods.adapter_stats import adapter_weights, sparsity_report

from test_methods import SETTINGS, _train, collator, loader, rows  # noqa: F401  (fixtures)

LORA = {"lr": 2e-3, "r": 4, "alpha": 8, "dropout": 0.0}


def _build(kind, params, loader):
    torch.manual_seed(0)
    method = build_method(kind, params, loader.target_modules)
    return method, method.build(loader)


@pytest.mark.parametrize("quantize,bits", [("nf4", 4), ("fp4", 4), ("int8", 8)])
def test_lora_trains_on_a_base_stored_in_the_bits_it_names(quantize, bits, loader, rows, collator):
    import bitsandbytes as bnb

    method, model = _build("lora", {**LORA, "quantize": quantize}, loader)
    layer_type = bnb.nn.Linear8bitLt if quantize == "int8" else bnb.nn.Linear4bit
    quantized = [m for m in model.modules() if isinstance(m, layer_type)]
    assert len(quantized) == 6 * 6 + 1  # every encoder linear and the pooler; the classifier head stays fp32
    if bits == 4:
        assert {m.weight.quant_state.quant_type for m in quantized} == {quantize}
    result = _train(method, model, rows, collator, replace(SETTINGS, epochs=4))
    curve = [p["loss"] for p in result["loss_curve"]]
    assert curve[-1] < curve[0], curve
    report = method.report(model)
    assert report["base_weight_bits"] == bits and report["quantize"] == quantize
    assert report["optimizer"] == "torch.optim.AdamW"  # only the qlora preset pages its optimizer
    assert not method.mergeable  # deployed unmerged: merging re-quantizes
    assert 0 < report["merge_error_rel"] < 10


def test_qhira_trains_on_a_4bit_base(loader, rows, collator):
    method, model = _build("hira", {"lr": 2e-2, "r": 4, "dropout": 0.0, "quantize": "nf4"}, loader)
    hira_b = [p for n, p in model.named_parameters() if "hira_B" in n]
    result = _train(method, model, rows, collator, replace(SETTINGS, epochs=4))
    curve = [p["loss"] for p in result["loss_curve"]]
    assert curve[-1] < curve[0], curve
    assert all(p.abs().sum() > 0 for p in hira_b)  # the Hadamard factors moved on the dequantized W0
    report = method.report(model)
    assert report["base_weight_bits"] == 4 and not method.mergeable
    assert report["merge_error_rel"] > 0.01  # what merging into NF4 would lose of HiRA's update


def test_sparse_qlora_keeps_its_sparsity_on_a_4bit_base(loader, rows, collator):
    params = {**LORA, "quantize": "nf4", "double_quant": True, "sparsity": 0.6, "prune_start_frac": 0.0,
              "prune_end_frac": 0.5}
    method, model = _build("sparse_lora_magnitude", params, loader)
    _train(method, model, rows, collator)
    report = method.report(model)
    assert report["base_weight_bits"] == 4 and report["double_quant"]
    assert abs(report["adapter_sparsity"] - 0.6) < 0.01  # counted over lora_A and lora_B, not the packed base
    zero = [(w == 0).clone() for w in adapter_weights(model)]
    _train(method, model, rows, collator, replace(SETTINGS, epochs=3))  # more optimizer steps
    assert all((w[z] == 0).all() for w, z in zip(adapter_weights(model), zero))
    assert abs(sparsity_report(model)["adapter_sparsity"] - 0.6) < 0.01


def test_merge_error_measures_what_requantizing_loses(loader, rows, collator):
    """A large update merged into int8 keeps nearly all of its effect; a small one merged into 4 bits loses
    most of it (its change falls below the quantization step). Full precision: nothing to measure."""
    errors = {}
    for quantize, scale in (("int8", 100.0), ("nf4", 1.0)):
        method, model = _build("lora", {**LORA, "quantize": quantize}, loader)
        _train(method, model, rows, collator, replace(SETTINGS, epochs=2))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(scale)
        errors[quantize] = merge_error(model)
    assert errors["int8"] < 0.05 < 0.2 < errors["nf4"], errors
    method, model = _build("lora", LORA, loader)
    assert merge_error(model) is None and "merge_error_rel" not in method.report(model)


def test_merge_error_does_not_depend_on_the_runs_precision(loader):
    """The same adapter on the same NF4 base, built for a bf16 run and for an fp32 one (their 4-bit layers
    compute in bfloat16 and float32): merge_error_rel is the merge's rounding alone, so the two agree."""
    from lorabench.runtime.precision import resolve_precision

    values = []
    for precision in ("bf16", "fp32"):
        torch.manual_seed(0)
        method = build_method("lora", {**LORA, "quantize": "nf4"}, loader.target_modules,
                              resolve_precision(precision, torch.device("cpu")))
        model = method.build(loader)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in sorted(model.named_parameters()):
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        computes = {m.compute_dtype for m in model.modules() if hasattr(m, "compute_dtype")}
        assert computes == {torch.bfloat16 if precision == "bf16" else torch.float32}
        values.append(merge_error(model))
    assert values[0] > 0 and abs(values[0] - values[1]) <= 1e-4 * values[1], values
