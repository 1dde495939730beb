"""Contextual FFN sparsity (SparseLoRA, Khaki et al. 2025): per batch and layer, compute only the FFN channels
that a cheap low-rank predictor expects to matter, on weights narrowed to those channels.

For each sparse layer and each training batch:
1. the predictor computes every hidden channel of the FFN for every token through a rank-r truncated SVD
   ``A B`` of the frozen up-projections, computed once per model (lorabench.methods.sparselora.predictors):
   ``act(x A B + b)`` (``act(x A_g B_g) * (x A_u B_u)`` for gated FFNs);
2. the channels with the largest L2 norm over the batch's real tokens are kept (the predictor runs in the
   layer's matmul precision, channels by tokens: ``ContextualSparsity._low_rank_scores``).
   The paper scores the mean input of each sequence instead; on these small models that misses the channels
   that carry massive activations on a few tokens (docs/papers.md has the measurement). Per token, a
   rank-r predictor costs r(h + i) multiply-adds against the dense FFN's 2hi (h the hidden width, i the FFN's);
3. the FFN runs on the frozen weights gathered to those channels (rows of the up-projections, columns of the
   down-projection) with ``F.linear``. Forward and input-gradient matmuls both shrink; autograd runs through
   the gathered path, so the kept channels' gradients are exact. LoRA adapters on these layers stay dense in
   rank; their ``B`` rows (up) or ``A`` columns (down) are gathered the same way, which equals masking the
   skipped channels of the hidden activation.

Layers in eval mode always run dense. Nothing here knows about training schedules: ``FFNSparsity.sparse`` is
switched by the method (dense warm-up). The attention's channels are lorabench.methods.sparselora.attention's; the predictors'
factors are computed in lorabench.methods.sparselora.predictors.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from lorabench.methods.sparselora.channels import (input_channels, kept_channels, linear_parts, map_for,
                                                   output_channels, replace_method, submodule)


@dataclass(frozen=True)
class FFNMap:
    """Where one architecture's feed-forward block lives in a transformer block and how it computes."""

    marker: str
    """Attribute every transformer block of this architecture has (finds the list of blocks)."""
    ups: tuple[str, ...]
    """Linears (paths inside a block) whose output channels are the FFN's hidden channels."""
    down: str
    """The linear that reads the hidden channels."""
    activation: str
    """Path of the activation function inside a block."""
    gated: bool
    """hidden = act(ups[0]) * ups[1] (SwiGLU) rather than act(ups[0])."""
    entry: str
    """The method, at a path inside the block, that computes the FFN from its input x and is replaced."""
    finish: Callable
    """(block, down_output, x) -> what ``entry`` returns (dropout, residual and LayerNorm where it has them)."""

    def hidden(self, block: torch.nn.Module, pre: list[torch.Tensor]) -> torch.Tensor:
        """The hidden activation from the up-projections' outputs ``pre`` (exact or predicted)."""
        act = submodule(block, self.activation)
        return act(pre[0]) * pre[1] if self.gated else act(pre[0])

    def install(self, block: torch.nn.Module, narrow: Callable) -> Callable[[], None]:
        """Route the block's FFN through ``narrow(x)``, or the original code where that returns None (dense).
        Returns the undo."""
        def wrap(original):
            def entry(x):
                y = narrow(x)
                return original(x) if y is None else self.finish(block, y, x)
            return entry
        return replace_method(block, self.entry, wrap)


# Channel maps by config.model_type. An architecture missing here cannot run sparselora (refused in config).
FFN_MAPS: dict[str, FFNMap] = {
    # BertLayer.feed_forward_chunk(x) = output.LayerNorm(output.dropout(output.dense(act(intermediate.dense(x)))) + x)
    "bert": FFNMap("intermediate", ("intermediate.dense",), "output.dense", "intermediate.intermediate_act_fn",
                   False, "feed_forward_chunk",
                   lambda block, y, x: block.output.LayerNorm(block.output.dropout(y) + x)),
    # DistilBERT FFN.ff_chunk(x) = dropout(lin2(act(lin1(x))))
    "distilbert": FFNMap("ffn", ("ffn.lin1",), "ffn.lin2", "ffn.activation", False, "ffn.ff_chunk",
                         lambda block, y, x: block.ffn.dropout(y)),
    # LlamaMLP.forward(x) = down_proj(act(gate_proj(x)) * up_proj(x))
    "llama": FFNMap("mlp", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "mlp.act_fn", True, "mlp.forward",
                    lambda block, y, x: y),
}


def ffn_map(model_type: str) -> FFNMap:
    return map_for(FFN_MAPS, model_type, "FFN", "sparselora")


def find_blocks(model: torch.nn.Module, fmap: FFNMap) -> list[torch.nn.Module]:
    """The transformer blocks, in order: the ModuleList whose every element has the map's marker."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and all(hasattr(b, fmap.marker) for b in module):
            return list(module)
    raise ValueError(f"no list of transformer blocks with a '{fmap.marker}' attribute in {type(model).__name__}")


class ContextualSparsity:
    """What the FFN and attention sparsities share: forwards installed on some blocks (undone by ``remove``),
    the real tokens of the batch, and the predictor's rank-r outputs for them.

    ``sparse`` switches every layer between sparse and dense (the method's warm-up); blocks in eval mode run
    dense. ``force_channels`` (layer -> indices) replaces the predictor, for tests and oracle controls.
    Subclasses give ``_factor_sources(layer)``: the (A, B, frozen bias or None) of each linear the predictor
    computes for that layer. ``sparsities[i]`` is layer i's fraction of channels skipped; 0 leaves the layer on
    its original code path."""

    def __init__(self, model: torch.nn.Module, model_type: str, sparsities: list[float]):
        self.blocks = find_blocks(model, ffn_map(model_type))
        if len(sparsities) != len(self.blocks):
            raise ValueError(f"{len(sparsities)} sparsities for {len(self.blocks)} layers")
        self.sparsities = list(sparsities)
        self.sparse = True
        self.force_channels: dict[int, torch.Tensor] = {}
        self.token_mask: torch.Tensor | None = None
        self._factor_cache: dict = {}
        self._undo: list[Callable[[], None]] = []
        # The real tokens of the batch (attention mask), so padding does not enter the predictor's scores.
        self._hook = model.register_forward_pre_hook(self._capture_mask, with_kwargs=True)

    def _capture_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self.token_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def remove(self) -> None:
        """Restore every block's original forward."""
        for undo in self._undo:
            undo()
        self._undo = []
        self._hook.remove()

    def _mask_of(self, x: torch.Tensor) -> torch.Tensor | None:
        """The batch's (batch, seq) attention mask when it fits ``x``'s first two dimensions, else None (every
        position counts)."""
        mask = self.token_mask
        return mask if mask is not None and mask.shape == x.shape[:2] else None

    def _factor_sources(self, layer: int) -> list[tuple]:
        raise NotImplementedError

    def _factors(self, layer: int, dtype: torch.dtype, device: torch.device) -> list[tuple]:
        """(A^T, B^T, bias as a column or None) in ``dtype`` per predicted linear of ``layer``, cast once: they
        and the frozen biases never change during training."""
        key = (layer, dtype, device)
        if key not in self._factor_cache:
            self._factor_cache[key] = [
                (a.T.to(device, dtype).contiguous(), b.T.to(device, dtype).contiguous(),
                 None if bias is None else bias.detach().to(device, dtype)[:, None])
                for a, b, bias in self._factor_sources(layer)]
        return self._factor_cache[key]

    @torch.no_grad()
    def _low_rank_scores(self, layer: int, x: torch.Tensor, score: Callable):
        """``score(outputs)``, where ``outputs`` are the predicted linears' outputs for the batch's real tokens
        through their rank-r factors, channels x tokens.

        They run in the precision the layer's matmuls run in (bf16 under autocast) and channels-by-tokens, so a
        norm over tokens reduces along contiguous memory: under half the cost of an fp32, tokens-by-channels
        computation, and the same choice of channels but for bf16 rounding at the boundary
        (docs/measurements/sparselora-speed.md)."""
        device = x.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else x.dtype
        tokens = x.reshape(-1, x.shape[-1])
        mask = self._mask_of(x)
        keep = None  # padding does not enter the scores
        if mask is not None and device.type == "cuda":
            # Zeroed in the outputs rather than dropped: dropping needs the count of real tokens on the host, a
            # sync per sparse layer that would leave the GPU idle (the padded columns cost a little compute).
            keep = mask.reshape(1, -1).to(dtype)
        elif mask is not None and not bool(mask.all()):
            tokens = tokens[mask.reshape(-1).bool()]  # on a CPU the read costs nothing and the compaction saves work
        tokens_t = tokens.to(dtype).T
        with torch.autocast(device.type, enabled=False):
            outputs = [b_t @ (a_t @ tokens_t) if bias is None else torch.addmm(bias, b_t, a_t @ tokens_t)
                       for a_t, b_t, bias in self._factors(layer, dtype, device)]
            return score(outputs if keep is None else [out * keep for out in outputs])


class FFNSparsity(ContextualSparsity):
    """Installs narrowed FFN forwards on a model's blocks and picks the channels of every batch.

    ``sparsities[i]`` is the fraction of layer i's FFN channels skipped."""

    def __init__(self, model: torch.nn.Module, model_type: str, sparsities: list[float],
                 predictors: dict[str, torch.Tensor]):
        super().__init__(model, model_type, sparsities)
        self.fmap = ffn_map(model_type)
        self.predictors = {}
        for i, s in enumerate(self.sparsities):
            if s > 0:
                self.predictors[i] = [(predictors[f"{i}.{j}.A"], predictors[f"{i}.{j}.B"])
                                      for j in range(len(self.fmap.ups))]
        self.widths = [linear_parts(submodule(b, self.fmap.ups[0]))[0].weight.shape[0] for b in self.blocks]
        self._undo = [self.fmap.install(block, functools.partial(self._narrow, i))
                      for i, block in enumerate(self.blocks) if self.sparsities[i] > 0]

    def _factor_sources(self, layer: int) -> list[tuple]:
        block = self.blocks[layer]
        return [(a, b, linear_parts(submodule(block, path))[0].bias)
                for path, (a, b) in zip(self.fmap.ups, self.predictors[layer])]

    def predicted_scores(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The predictor's score of every hidden channel of ``layer`` for the batch ``x``: the L2 norm, over the
        batch's real tokens, of the hidden activation computed through the rank-r factors."""
        block = self.blocks[layer]
        return self._low_rank_scores(layer, x, lambda pre: torch.linalg.vector_norm(
            self.fmap.hidden(block, pre), dim=1, dtype=torch.float32))

    def select(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Sorted indices of the channels ``layer`` computes for this batch."""
        if layer in self.force_channels:
            return self.force_channels[layer].to(x.device)
        k = kept_channels(self.widths[layer], self.sparsities[layer])
        return torch.topk(self.predicted_scores(layer, x), k, sorted=False).indices.sort().values

    def _narrow(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        block = self.blocks[layer]
        if not (self.sparse and block.training):
            return None
        idx = self.select(layer, x)
        ups = [output_channels(submodule(block, path), x, idx) for path in self.fmap.ups]
        return input_channels(submodule(block, self.fmap.down), self.fmap.hidden(block, ups), idx)

    def _dense_capture(self, model: torch.nn.Module, batch: dict):
        """One dense forward; per sparse layer, the FFN input and the true hidden activation."""
        inputs, hidden, hooks = {}, {}, []
        for i in self.predictors:
            block = self.blocks[i]

            def grab_input(module, args, i=i):
                inputs[i] = args[0].detach()

            def grab_hidden(module, args, i=i):
                hidden[i] = args[0].detach()
            hooks.append(submodule(block, self.fmap.ups[0]).register_forward_pre_hook(grab_input))
            hooks.append(submodule(block, self.fmap.down).register_forward_pre_hook(grab_hidden))
        was_sparse, self.sparse = self.sparse, False
        try:
            with torch.no_grad():
                model(**batch)  # also sets token_mask through the model's pre-hook
        finally:
            self.sparse = was_sparse
            for h in hooks:
                h.remove()
        return inputs, hidden

    def predictor_quality(self, model: torch.nn.Module, batch: dict) -> dict[int, dict[str, float]]:
        """Per sparse layer, how well the predictor's kept channels match the oracle's: the channels whose true
        hidden activation has the largest L2 norm over the batch's real tokens (from one dense forward).

        - ``overlap``: share of the predictor's channels among the oracle's top-k (random: 1 - sparsity);
        - ``mass``: share of the activation's squared norm in the predictor's channels, over the oracle's;
        - ``random_mass``: the same for a random choice of as many channels (its expected value).
        """
        inputs, hidden = self._dense_capture(model, batch)
        quality = {}
        for i, h in hidden.items():
            mask = self._mask_of(h)
            h = h.float() if mask is None else h.float() * mask.to(torch.float32).unsqueeze(-1)
            energy = h.pow(2).sum(dim=(0, 1))
            k = kept_channels(self.widths[i], self.sparsities[i])
            oracle = torch.topk(energy, k).indices
            predicted = torch.topk(self.predicted_scores(i, inputs[i]), k).indices
            overlap = len(set(predicted.tolist()) & set(oracle.tolist())) / k
            best = energy[oracle].sum()
            quality[i] = {"overlap": overlap, "mass": (energy[predicted].sum() / best).item(),
                          "random_mass": (k / energy.numel() * energy.sum() / best).item()}
        return quality

    def matmul_fraction(self) -> float:
        """Fraction of the FFN's frozen-weight multiply-adds still computed, averaged over layers."""
        return sum(kept_channels(w, s) / w for w, s in zip(self.widths, self.sparsities)) / len(self.widths)
