import pytest

from lorabench.loading.models import TARGET_MODULES, ModelLoader, language_model_kind, target_modules_for

from conftest import MINILM


def test_target_module_table():
    assert target_modules_for("distilbert") == ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"]
    assert target_modules_for("bert") == ["query", "key", "value", "dense"]
    assert "gate_proj" in TARGET_MODULES["llama"] and "down_proj" in TARGET_MODULES["llama"]
    assert target_modules_for("bert", ["query"]) == ["query"]
    with pytest.raises(ValueError, match="target_modules"):
        target_modules_for("mystery-arch")


def test_load_minilm_from_snapshot_for_classification():
    loader = ModelLoader(MINILM, "classification", 2)
    model = loader.load()
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.classifier.out_features == 2
    assert loader.target_modules == TARGET_MODULES["bert"] and loader.peft_task_type == "SEQ_CLS"


def test_language_model_kind_follows_the_architecture():
    from transformers import AutoConfig

    assert language_model_kind(AutoConfig.from_pretrained(MINILM)) == "masked"
    llama = AutoConfig.for_model("llama", architectures=["LlamaForCausalLM"])
    assert language_model_kind(llama) == "causal"


@pytest.mark.parametrize("task", ["language_modeling", "classification"])
def test_qlora_on_distilbert_keeps_tied_and_task_heads_in_full_precision(tiny_distilbert, task):
    import bitsandbytes as bnb
    import torch
    from transformers import AutoTokenizer

    from lorabench.execution.evaluate import evaluate
    from lorabench.loading.data import Collator
    from lorabench.methods import build_method

    loader = ModelLoader(tiny_distilbert, task, 2)
    method = build_method("qlora", {"lr": 1e-3, "r": 4, "alpha": 8, "dropout": 0.0}, loader.target_modules)
    model = method.build(loader)  # raised in bitsandbytes while the tied vocab_projector was quantized
    quantized = {n.removesuffix(".base_layer").rsplit(".", 1)[-1] for n, m in model.named_modules()
                 if isinstance(m, bnb.nn.Linear4bit)}  # PEFT wraps each adapted layer: <name>.base_layer
    assert quantized and quantized <= set(TARGET_MODULES["distilbert"])  # heads stay full precision
    tok = AutoTokenizer.from_pretrained(tiny_distilbert)
    texts = ["a fine film with a warm heart", "dull, long and badly acted", "the plot never moves"]
    labels = [1, 0, 0]
    rows = [{"example_id": i, "input_ids": ids, "labels": labels[i] if task == "classification" else list(ids)}
            for i, ids in enumerate(tok(texts)["input_ids"])]
    collator = Collator(tok, masked_lm=loader.lm_kind == "masked")
    batch = collator(rows, generator=torch.Generator().manual_seed(0))
    model.train()
    model(**batch).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    result, _ = evaluate(model, rows, collator, task, loader.lm_kind, 2, 0, torch.device("cpu"))
    if task == "language_modeling":
        assert loader.lm_kind == "masked" and 1 < result["perplexity"] < float("inf")
    else:
        assert "pre_classifier" in loader.head_modules and 0 <= result["accuracy"] <= 1


def test_mean_pooling_reads_the_mean_of_real_tokens_and_ignores_padding():
    import torch
    from transformers import AutoTokenizer

    from lorabench.loading.models import MeanPooler

    loader = ModelLoader(MINILM, "classification", 2, pooling="mean")
    model = loader.load().eval()
    assert isinstance(model.bert.pooler, MeanPooler)
    tok = AutoTokenizer.from_pretrained(MINILM)
    short = tok(["a gripping, funny film"], return_tensors="pt")
    padded = tok(["a gripping, funny film"], padding="max_length", max_length=24, return_tensors="pt")
    with torch.no_grad():
        logits = model(**short).logits
        hidden = model.bert(**short).last_hidden_state
        assert torch.allclose(model(**padded).logits, logits, atol=1e-5)  # padding changes nothing
        expected = model.classifier(hidden.mean(dim=1))  # no padding here: the plain mean
    assert torch.allclose(logits, expected, atol=1e-5)
    cls_model = ModelLoader(MINILM, "classification", 2).load().eval()
    assert type(cls_model.bert.pooler).__name__ == "BertPooler"  # the default keeps the checkpoint's head
