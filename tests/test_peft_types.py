"""AdaLoRA and the generic ``peft`` type on real models: ranks that shrink to their budget, evaluation free
of AdaLoRA's training penalty, and a non-LoRA PEFT method from config alone, trained, saved and reloaded."""

from dataclasses import replace

import pytest
import torch
from transformers import AutoTokenizer

from lorabench.execution.evaluate import evaluate
from lorabench.loading.data import Collator
from lorabench.loading.models import ModelLoader
from lorabench.methods import build_method, count_parameters
from lorabench.methods.adalora import layer_ranks, schedule

from conftest import MINILM
from test_methods import SETTINGS, _logits, _train, collator, loader, rows  # noqa: F401  (fixtures)

ADALORA = {"lr": 5e-3, "alpha": 8, "dropout": 0.0, "init_r": 8, "target_r": 2}


def test_adalora_schedule_keeps_a_scoring_step_before_the_final_ranks():
    assert schedule(100, 0.1, 0.2) == (10, 20)
    assert schedule(1, 0.1, 0.2) is None  # one step: nothing to score, the ranks stay init_r
    for total in (2, 3, 5):
        tinit, tfinal = schedule(total, 0.3, 0.5)
        assert tinit < total - tfinal and total - tfinal >= 2  # PEFT scores steps before total - tfinal


def test_adalora_ranks_shrink_to_target_r_and_survive_save_and_reload(loader, rows, collator, tmp_path):
    torch.manual_seed(0)
    method = build_method("adalora", ADALORA, loader.target_modules)
    model = method.build(loader)
    assert len(set(layer_ranks(model).values()) - {0, 8}) == 0  # lora_E starts at zero: a rank counts non-zeros
    _train(method, model, rows, collator, replace(SETTINGS, epochs=10))
    ranks = layer_ranks(model)
    assert len(ranks) == 6 * 6 + 1
    assert sum(ranks.values()) / len(ranks) == pytest.approx(2.0, abs=0.05)  # the budget: target_r per layer
    assert min(ranks.values()) < 8 and max(ranks.values()) <= 8
    report = method.report(model)
    assert report["adalora_rank_mean"] == pytest.approx(2.0, abs=0.05) and report["adalora_init_r"] == 8
    assert model.peft_config["default"].total_step == 10  # the real schedule, not the constructor's placeholder
    before = _logits(model, rows, collator)
    method.save(model, tmp_path)
    reloaded = method.load_trained(loader, tmp_path)
    torch.testing.assert_close(_logits(reloaded, rows, collator), before, rtol=0, atol=1e-5)


def test_adalora_penalty_trains_but_never_reaches_evaluation(tiny_llama):
    """PEFT adds AdaLoRA's orthogonality penalty to outputs.loss even in eval; here it is the method's
    regularization, so the model's loss and the perplexity are the task's alone."""
    import torch.nn.functional as F

    loader = ModelLoader(tiny_llama, "language_modeling")
    torch.manual_seed(0)
    method = build_method("adalora", ADALORA, loader.target_modules)
    model = method.build(loader)
    ids = torch.randint(0, 1000, (4, 16))
    rows = [{"example_id": i, "input_ids": x.tolist(), "labels": x.tolist()} for i, x in enumerate(ids)]
    lm_collator = Collator(AutoTokenizer.from_pretrained(MINILM))  # equal lengths: no padding involved
    _train(method, model, rows, lm_collator, replace(SETTINGS, epochs=4, batch_size=4))
    assert method.regularization(model) > 0
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    nll = F.cross_entropy(out.logits[:, :-1].reshape(-1, 1000), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, nll)
    scores, _ = evaluate(model, rows, lm_collator, "language_modeling", "causal", 4, 0, torch.device("cpu"))
    assert scores["perplexity"] == pytest.approx(float(torch.exp(nll)), rel=1e-5)


@pytest.mark.parametrize("peft_config", [{"peft_type": "VERA", "r": 64}, {"peft_type": "LOHA", "r": 4, "alpha": 8}],
                         ids=["vera", "loha"])
def test_a_non_lora_peft_method_from_config_alone(peft_config, loader, rows, collator, tmp_path):
    torch.manual_seed(0)
    method = build_method("my_method", {"type": "peft", "lr": 5e-3, "peft_config": peft_config},
                          loader.target_modules)
    model = method.build(loader)
    assert model.peft_config["default"].peft_type.value == peft_config["peft_type"]
    counts = count_parameters(model, loader.head_modules)
    assert counts["adapter_params"] > 0 and counts["other_trainable_params"] == 0
    result = _train(method, model, rows, collator, replace(SETTINGS, epochs=4))
    curve = [p["loss"] for p in result["loss_curve"]]
    assert curve[-1] < curve[0], curve
    before = _logits(model, rows, collator)
    method.save(model, tmp_path)
    torch.testing.assert_close(_logits(method.load_trained(loader, tmp_path), rows, collator), before,
                               rtol=0, atol=1e-5)
