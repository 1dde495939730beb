import pytest

from lorabench.models import TARGET_MODULES, ModelLoader, language_model_kind, target_modules_for

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
