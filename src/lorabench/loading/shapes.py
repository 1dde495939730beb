"""A checkpoint's shape (architecture, layers, widths), read from its snapshot's config.json or GGUF header
without loading weights or torch: what config validation needs before any job runs."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from lorabench.io import snapshot_path


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
