"""Pretrained models: fetching into resources/, the target-module table, loading for a task."""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from lorabench.hub import download_repo, snapshot_path
from lorabench.memory import release_checkpoint_mapping

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
    from lorabench.utils import atomic_dir

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


@dataclass(frozen=True)
class ModelShape:
    """What config validation needs to know of a checkpoint before any job runs."""

    model_type: str
    """config.model_type (bert, distilbert, llama, ...)."""
    num_layers: int | None
    """Transformer blocks (None where the config names it in a way not known here, as for the rest)."""
    hidden: int | None
    """Width of the residual stream."""
    intermediate: int | None
    """Width of the FFN's hidden layer."""
    kv_width: int | None
    """Output width of the key and value projections (smaller than hidden with grouped-query attention)."""

    @property
    def smallest_width(self) -> int | None:
        widths = [w for w in (self.hidden, self.intermediate, self.kv_width) if w]
        return min(widths) if widths else None


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: str | Path, wanted: set[str]) -> dict:
    """The ``wanted`` metadata keys of a GGUF file, read from its header, stopping once all are found (the
    gguf package's reader also parses the tokenizer's vocabulary and every tensor entry: seconds, not ms)."""
    import struct

    def read(fmt):
        return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]

    def string():
        return fh.read(read("<Q")).decode("utf-8", "replace")

    def value(kind):
        if kind == 8:
            return string()
        if kind == 9:
            item_kind, count = read("<I"), read("<Q")
            return [value(item_kind) for _ in range(count)]
        return read(_GGUF_SCALARS[kind])

    found = {}
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        read("<I"), read("<Q")  # version, tensor count
        for _ in range(read("<Q")):
            key = string()
            found[key] = value(read("<I"))
            if wanted <= found.keys():
                break
    return {k: found[k] for k in wanted if k in found}


@functools.lru_cache(maxsize=None)
def _gguf_shape(path: str) -> ModelShape:
    arch = gguf_metadata(path, {"general.architecture"})["general.architecture"]
    keys = {f"{arch}.{k}" for k in ("block_count", "embedding_length", "feed_forward_length",
                                     "attention.head_count", "attention.head_count_kv")}
    meta = {k.split(".", 1)[1]: v for k, v in gguf_metadata(path, keys).items()}
    hidden, heads = meta["embedding_length"], meta["attention.head_count"]
    return ModelShape(arch, meta["block_count"], hidden, meta["feed_forward_length"],
                      hidden // heads * meta.get("attention.head_count_kv", heads))


def model_shape(snapshots: str, model: dict) -> ModelShape | None:
    """The shape of a configured model, read from its snapshot (config.json, or the GGUF file's metadata)
    without loading weights; None without a snapshot folder (the hub is not asked)."""
    if not snapshots:
        return None
    folder = snapshot_path(snapshots, "models", model["repo"])
    if model.get("gguf_file"):
        path = folder / model["gguf_file"]
        return _gguf_shape(str(path)) if path.exists() else None
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        return None
    cfg = json.loads(cfg_file.read_text())

    def first(*keys):  # the same quantity has other names in other architectures
        return next((cfg[k] for k in keys if isinstance(cfg.get(k), int)), None)

    hidden = first("hidden_size", "dim", "n_embd", "d_model")
    heads = first("num_attention_heads", "n_heads", "n_head")
    kv_heads = first("num_key_value_heads") or heads
    return ModelShape(cfg.get("model_type", ""), first("num_hidden_layers", "n_layers", "n_layer", "num_layers"),
                      hidden, first("intermediate_size", "hidden_dim", "n_inner", "ffn_dim"),
                      hidden // heads * kv_heads if hidden and heads else None)


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
            # memory (for SmolLM2 at the throughput batch, 60-90 MB that no evaluation reads).
            model.config.use_cache = False
        else:
            model = AutoModelForMaskedLM.from_pretrained(path, **kwargs)
        return release_checkpoint_mapping(model)
