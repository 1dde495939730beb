"""Contextual attention sparsity (SparseLoRA's second half, Khaki et al. 2025): per batch and layer, every
attention head runs on only the channels a low-rank predictor expects to matter.

For each sparse layer and each training batch (heads are never dropped; every head keeps as many channels):
- q and k keep the same channels of each key/value head, and of the query heads that share it under
  grouped-query attention. A channel's score is the product of its predicted q and k norms over the batch's
  real tokens (the paper's score; q's norms averaged over the group). Under rotary embeddings channels i and
  i + head_dim/2 rotate into each other, so they are kept or skipped as a pair.
- v keeps the channels of each key/value head with the largest predicted norm; o reads only those columns.
- the q, k and v projections compute only their kept output channels and o only its kept input columns, on
  frozen weights gathered to them (lorabench.methods.sparselora.ffn.output_channels, input_channels); the attention's
  own matmuls shrink with them. The logits stay scaled by 1/sqrt(head_dim).

The whole equals a dense attention whose skipped q, k and v channels (base and adapter) are zero: that is what
the tests check. Layers in eval mode, and calls with a cache or cross-attention inputs, run the original code.
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from lorabench.methods.sparselora.channels import (input_channels, linear_parts, map_for, output_channels,
                                                   replace_method, submodule)
from lorabench.methods.sparselora.ffn import ContextualSparsity


@dataclass(frozen=True)
class AttnMap:
    """Where one architecture's self-attention lives in a transformer block and how it computes."""

    core: str
    """The module that holds the heads' settings (scaling, dropout) and is passed to the attention function."""
    q: str
    """Query projection (path inside a block); k, v and o likewise."""
    k: str
    v: str
    o: str
    entry: str
    """The method, at a path inside the block, that computes the attention from the block's hidden states and is
    replaced; its first parameter is the hidden states."""
    rope: bool
    """q and k are rotated after projection (rotary embeddings from the ``position_embeddings`` argument)."""
    heads: Callable
    """core -> (query heads, key/value heads, head_dim)."""
    dropout: Callable
    """core -> the attention-probability dropout while training."""
    finish: Callable
    """(block, o_output, x) -> the first value ``entry`` returns (dropout, residual and LayerNorm where it has
    them)."""

    def projections(self) -> dict[str, str]:
        """The linears the predictor approximates, by name."""
        return {"q": self.q, "k": self.k, "v": self.v}

    def install(self, block: torch.nn.Module, narrow: Callable) -> Callable[[], None]:
        """Route the block's attention through ``narrow(arguments)``, or the original code where that returns None.
        ``arguments`` are the call's, by parameter name. Returns the undo."""
        def wrap(original):
            signature = inspect.signature(original)

            def entry(*args, **kwargs):
                out = narrow(signature.bind(*args, **kwargs).arguments)
                return original(*args, **kwargs) if out is None else out
            return entry
        return replace_method(block, self.entry, wrap)


# Channel maps by config.model_type. An architecture missing here cannot take attn_sparsity (refused in config).
ATTN_MAPS: dict[str, AttnMap] = {
    # BertAttention.forward(x, mask) = output.LayerNorm(output.dropout(output.dense(self(x, mask))) + x)
    "bert": AttnMap("attention.self", "attention.self.query", "attention.self.key", "attention.self.value",
                    "attention.output.dense", "attention.forward", False,
                    lambda core: (core.num_attention_heads, core.num_attention_heads, core.attention_head_size),
                    lambda core: core.dropout.p,
                    lambda block, y, x: block.attention.output.LayerNorm(block.attention.output.dropout(y) + x)),
    # LlamaAttention.forward(x, position_embeddings, mask) = o_proj(attention(rope(q_proj(x)), rope(k_proj(x)), v))
    "llama": AttnMap("self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "self_attn.forward", True,
                     lambda core: (core.config.num_attention_heads, core.config.num_key_value_heads, core.head_dim),
                     lambda core: core.attention_dropout,
                     lambda block, y, x: y),
}


def attn_map(model_type: str) -> AttnMap:
    return map_for(ATTN_MAPS, model_type, "attention", "attn_sparsity")


def kept_per_head(head_dim: int, sparsity: float) -> int:
    """Channels each head keeps at ``sparsity``: an even number (rotary pairs), at least two."""
    return 2 * max(1, int(round(head_dim / 2 * (1.0 - sparsity))))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of channels ordered [pairs' first halves, their second halves], as the full head's."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class AttnSparsity(ContextualSparsity):
    """Installs narrowed attention forwards on a model's blocks and picks each batch's channels per head.

    ``sparsities[i]`` is the fraction of each head's channels layer i skips. ``force_channels[i]`` is a (qk, v)
    pair of (key/value heads, kept) index tensors."""

    def __init__(self, model: torch.nn.Module, model_type: str, sparsities: list[float],
                 predictors: dict[str, torch.Tensor]):
        self.amap = attn_map(model_type)
        missing = [i for i, s in enumerate(sparsities) if s > 0 and f"{i}.attn.q.A" not in predictors]
        if missing:
            raise ValueError(f"the predictors have no attention factors for layers {missing}: the predictor file "
                             f"predates attention sparsity; delete it so the predictor rule writes it again")
        super().__init__(model, model_type, sparsities)
        self.heads = self.amap.heads(submodule(self.blocks[0], self.amap.core))
        self.predictors = {i: [(predictors[f"{i}.attn.{n}.A"], predictors[f"{i}.attn.{n}.B"]) for n in "qkv"]
                           for i, s in enumerate(self.sparsities) if s > 0}
        self._undo = [self.amap.install(block, functools.partial(self._narrow, i))
                      for i, block in enumerate(self.blocks) if self.sparsities[i] > 0]

    def _factor_sources(self, layer: int) -> list[tuple]:
        block = self.blocks[layer]
        return [(a, b, linear_parts(submodule(block, path))[0].bias)
                for path, (a, b) in zip(self.amap.projections().values(), self.predictors[layer])]

    def kept(self, layer: int) -> int:
        return kept_per_head(self.heads[2], self.sparsities[layer])

    def select(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q/k channels, v channels) each head of ``layer`` keeps for this batch: (key/value heads, kept)
        indices inside a head; q/k ordered [pairs' first halves, second halves] under rotary embeddings."""
        if layer in self.force_channels:
            return tuple(t.to(x.device) for t in self.force_channels[layer])
        n_q, n_kv, head_dim = self.heads
        q, k, v = (n.view(-1, head_dim) for n in self._low_rank_scores(
            layer, x, lambda pre: [torch.linalg.vector_norm(p, dim=1, dtype=torch.float32) for p in pre]))
        q = q.view(n_kv, n_q // n_kv, head_dim).mean(dim=1)
        kept = self.kept(layer)
        if self.amap.rope:
            half = head_dim // 2
            pair = lambda n: n[:, :half].hypot(n[:, half:])  # noqa: E731  (a rotation keeps a pair's norm)
            first = torch.topk(pair(q) * pair(k), kept // 2, dim=1, sorted=False).indices.sort(dim=1).values
            qk = torch.cat([first, first + half], dim=1)
        else:
            qk = torch.topk(q * k, kept, dim=1, sorted=False).indices.sort(dim=1).values
        return qk, torch.topk(v, kept, dim=1, sorted=False).indices.sort(dim=1).values

    def _narrow(self, layer: int, args: dict):
        block = self.blocks[layer]
        if not (self.sparse and block.training) or args.get("cache") is not None \
                or args.get("encoder_hidden_states") is not None:
            return None
        amap, core = self.amap, submodule(block, self.amap.core)
        x = next(iter(args.values()))
        qk, v_keep = self.select(layer, x)
        n_q, n_kv, head_dim = self.heads
        group, kept, (batch, seq) = n_q // n_kv, qk.shape[1], x.shape[:2]
        q_heads = torch.arange(n_q, device=x.device)[:, None] * head_dim
        kv_heads = torch.arange(n_kv, device=x.device)[:, None] * head_dim

        def project(path, columns, heads):
            return output_channels(submodule(block, path), x, columns.reshape(-1)).view(
                batch, seq, heads, kept).transpose(1, 2)
        q = project(amap.q, q_heads + qk.repeat_interleave(group, dim=0), n_q)
        k = project(amap.k, kv_heads + qk, n_kv)
        v = project(amap.v, kv_heads + v_keep, n_kv)
        if amap.rope:
            cos, sin = (t[..., qk].transpose(1, 2) for t in args["position_embeddings"])  # (b, kv heads, seq, kept)
            q = _rotate(q, cos.repeat_interleave(group, dim=1), sin.repeat_interleave(group, dim=1))
            k = _rotate(k, cos, sin)
        # Imported here, where it runs: at the top it would cost every Snakemake invocation that reads the
        # method registry ~3 s of transformers.modeling_utils (docs/measurements/default-run.md).
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            core.config._attn_implementation, sys.modules[type(core).__module__].eager_attention_forward)
        out, weights = attention(core, q, k, v, args.get("attention_mask"),
                                 dropout=amap.dropout(core) if core.training else 0.0, scaling=core.scaling,
                                 **args.get("kwargs", {}))
        out = out.reshape(batch, seq, n_q * kept)
        y = input_channels(submodule(block, amap.o), out, (q_heads + v_keep.repeat_interleave(group, dim=0)).reshape(-1))
        return amap.finish(block, y, x), weights

    def matmul_fraction(self) -> float:
        """Fraction of the attention's per-head channels still computed, averaged over layers."""
        head_dim = self.heads[2]
        return sum(self.kept(i) / head_dim if s > 0 else 1.0 for i, s in enumerate(self.sparsities)) \
            / len(self.sparsities)
