"""Pretrained models: fetching into resources/, the target-module table, loading for a task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from lorabench.io import snapshot_path
from lorabench.loading.hub import download_repo
from lorabench.runtime.memory import release_checkpoint_mapping

# Linear layers adapted by default, by architecture (config.model_type). Override per model in config.
TARGET_MODULES: dict[str, list[str]] = {
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "bert": ["query", "key", "value", "dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}

# Language-model output layers, by architecture: never quantized. Their weight is tied to the input embedding
# (DistilBERT's vocab_projector, BERT's cls.predictions.decoder, Llama's lm_head), and bitsandbytes cannot
# quantize a weight shared with an embedding (it asserts in fix_4bit_weight_quant_state_from_module).
LM_OUTPUT_MODULES: dict[str, list[str]] = {
    "distilbert": ["vocab_transform", "vocab_projector"],
    "bert": ["cls"],
    "llama": ["lm_head"],
}

# Where each architecture's sentence pooler sits in its sequence-classification model (pooling: mean replaces
# it). DistilBERT and Llama have no pooler module (they read one token), so mean pooling is not offered there.
POOLER_OWNERS: dict[str, str] = {"bert": "bert"}

# Files copied from a snapshot: configs, tokenizers and safetensors weights only (never pickles).
_COPY_SUFFIXES = (".json", ".txt", ".model", ".safetensors")


def target_modules_for(model_type: str, override: list[str] | None = None) -> list[str]:
    if override:
        return list(override)
    try:
        return list(TARGET_MODULES[model_type])
    except KeyError:
        raise ValueError(
            f"no target-module entry for architecture '{model_type}'; known: {', '.join(TARGET_MODULES)}. "
            "Set models.<name>.target_modules in the config."
        ) from None


def fetch_model(repo: str, snapshots: str, out_dir: str | Path, gguf_file: str | None = None) -> None:
    """Materialize a hub repo as an ordinary safetensors folder in ``out_dir`` (written atomically)."""
    from lorabench.io import atomic_dir

    src = snapshot_path(snapshots, "models", repo) if snapshots else download_repo(repo, "model", gguf_file)
    with atomic_dir(out_dir) as tmp:
        if gguf_file:
            # GGUF is dequantized once here, so every later job loads plain safetensors quickly.
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
            # The weights are already dequantized to float32; drop the GGUF marker so they save as plain
            # safetensors (transformers refuses to serialize a model it still thinks is GGUF-quantized).
            model.hf_quantizer = None
            for holder in (model.config, getattr(model, "generation_config", None)):
                if holder is not None and hasattr(holder, "quantization_config"):
                    delattr(holder, "quantization_config")
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
        else:
            for f in Path(src).iterdir():
                if f.is_file() and f.suffix in _COPY_SUFFIXES:
                    shutil.copy2(f, tmp / f.name)
            if not any(tmp.glob("*.safetensors")):
                raise FileNotFoundError(f"{src} has no .safetensors weights; lorabench loads no pickled weights")
        (tmp / "lorabench_source.json").write_text(json.dumps({"repo": repo, "gguf_file": gguf_file}))


class MeanPooler(torch.nn.Module):
    """The mean of the last hidden states over the real tokens, in place of BERT's [CLS] pooler. Sentence-
    transformers encoders (all-MiniLM-L6-v2) were trained with this pooling; their checkpoint's pooler dense
    layer was never trained. No weights: the classifier reads the mean directly."""

    def __init__(self):
        super().__init__()
        self.mask: torch.Tensor | None = None

    def remember_mask(self, module, args, kwargs):
        """Forward pre-hook on the encoder: keep this forward's attention mask (the pooler is called without)."""
        self.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return hidden.mean(dim=1)
        weights = self.mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def mean_pooling_refusal(model_type: str) -> str | None:
    """Why mean pooling cannot serve this architecture (None where it can): the one message for the config check
    before any job and for the load, which refuses it where no snapshot let the config check read the model."""
    if model_type in POOLER_OWNERS:
        return None
    return (f"mean pooling replaces the [CLS] pooler, which architecture '{model_type}' does not have (available "
            f"for: {', '.join(POOLER_OWNERS)}); set models.<name>.pooling to cls")


def use_mean_pooling(model: torch.nn.Module) -> torch.nn.Module:
    """Replace the [CLS] pooler of a sequence-classification model by ``MeanPooler``."""
    model_type = model.config.model_type
    refusal = mean_pooling_refusal(model_type)
    if refusal:
        raise ValueError(refusal)
    encoder = getattr(model, POOLER_OWNERS[model_type])
    pooler = MeanPooler()
    encoder.pooler = pooler
    # A bound method, so that a deep copy of the model (merge-error probes) hooks its own copy of the pooler.
    encoder.register_forward_pre_hook(pooler.remember_mask, with_kwargs=True)
    return model


def language_model_kind(config) -> str:
    """'causal' for decoders, 'masked' for encoders: the model, not the config, decides perplexity's kind."""
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_decoder", False) or any(a.endswith("ForCausalLM") for a in archs):
        return "causal"
    return "masked"


class ModelLoader:
    """Loads the fetched base model with the head its task needs; methods call it (QLoRA with quantization)."""

    def __init__(self, model_dir: str | Path, task: str, num_labels: int = 2, target_override=None,
                 pooling: str = "cls"):
        from transformers import AutoConfig

        self.model_dir = str(model_dir)
        self.task = task
        #: Sentence classification reads the [CLS] pooler ('cls', the checkpoint's own head) or the mean of the
        #: token states ('mean', what sentence-transformers encoders were trained with).
        self.pooling = pooling
        self.num_labels = num_labels
        self.config = AutoConfig.from_pretrained(self.model_dir)
        self.lm_kind = language_model_kind(self.config) if task == "language_modeling" else None
        self.target_modules = target_modules_for(self.config.model_type, target_override)

    @classmethod
    def for_dataset(cls, model_dir, dataset: dict, model_cfg: dict) -> "ModelLoader":
        """The loader a config's dataset entry and its model entry ask for (head, labels, targets, pooling)."""
        return cls(model_dir, dataset["task"], dataset.get("num_labels", 2), model_cfg.get("target_modules"),
                   model_cfg.get("pooling", "cls"))

    @property
    def peft_task_type(self) -> str | None:
        return {"classification": "SEQ_CLS", "language_modeling": "CAUSAL_LM" if self.lm_kind == "causal" else None}[
            self.task
        ]

    @property
    def head_modules(self) -> list[str]:
        """Task-head modules that stay in full precision and train with every method."""
        return ["classifier", "score", "pre_classifier"] if self.task == "classification" else []

    @property
    def unquantized_modules(self) -> list[str]:
        """Modules a quantized base keeps in full precision: the task head and the LM output layers."""
        if self.task == "classification":
            return self.head_modules
        return LM_OUTPUT_MODULES.get(self.config.model_type, ["lm_head"])

    def load(self, path: str | None = None, **kwargs) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

        path = path or self.model_dir
        kwargs.setdefault("use_safetensors", True)  # never unpickle weights
        if self.task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=self.num_labels, **kwargs)
            if self.pooling == "mean":
                model = use_mean_pooling(model)
        elif self.lm_kind == "causal":
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            # The benchmark scores text, it never generates: a KV cache would only cost every forward time and
            # memory that no evaluation reads (docs/measurements/qlora-memory.md has how much).
            model.config.use_cache = False
        else:
            model = AutoModelForMaskedLM.from_pretrained(path, **kwargs)
        return release_checkpoint_mapping(model)
