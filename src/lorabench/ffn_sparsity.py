"""Contextual FFN sparsity (SparseLoRA, Khaki et al. 2025): per batch and layer, compute only the FFN channels
that a cheap low-rank predictor expects to matter, on weights narrowed to those channels.

For each sparse layer and each training batch:
1. the predictor computes every hidden channel of the FFN for every token through a rank-r truncated SVD
   ``A B`` of the frozen up-projections, computed once per model (``compute_predictors``):
   ``act(x A B + b)`` (``act(x A_g B_g) * (x A_u B_u)`` for gated FFNs);
2. the channels with the largest L2 norm over the batch's real tokens are kept (the predictor runs in the
   layer's matmul precision, channels by tokens: ``FFNSparsity.predicted_scores``).
   The paper scores the mean input of each sequence instead; on these small models that misses the channels
   that carry massive activations on a few tokens (docs/papers.md has the measurement). Per token, rank 8
   costs about 1% of the dense FFN here;
3. the FFN runs on the frozen weights gathered to those channels (rows of the up-projections, columns of the
   down-projection) with ``F.linear``. Forward and input-gradient matmuls both shrink; autograd runs through
   the gathered path, so the kept channels' gradients are exact. LoRA adapters on these layers stay dense in
   rank; their ``B`` rows (up) or ``A`` columns (down) are gathered the same way, which equals masking the
   skipped channels of the hidden activation.

Layers in eval mode always run dense. Nothing here knows about training schedules: ``FFNSparsity.sparse`` is
switched by the method (dense warm-up).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F


def _get(module: torch.nn.Module, path: str):
    return functools.reduce(getattr, path.split("."), module)


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
        act = _get(block, self.activation)
        return act(pre[0]) * pre[1] if self.gated else act(pre[0])

    def install(self, block: torch.nn.Module, narrow: Callable) -> Callable[[], None]:
        """Route the block's FFN through ``narrow(x)``, or the original code where that returns None (dense).
        Returns the undo."""
        owner_path, _, name = self.entry.rpartition(".")
        owner = _get(block, owner_path) if owner_path else block
        original = getattr(owner, name)

        def entry(x):
            y = narrow(x)
            return original(x) if y is None else self.finish(block, y, x)

        setattr(owner, name, entry)  # an instance attribute shadows the class's method
        return lambda: delattr(owner, name)


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
    try:
        return FFN_MAPS[model_type]
    except KeyError:
        raise ValueError(f"no FFN channel map for architecture '{model_type}'; sparselora supports "
                         f"{', '.join(sorted(FFN_MAPS))}") from None


def find_blocks(model: torch.nn.Module, fmap: FFNMap) -> list[torch.nn.Module]:
    """The transformer blocks, in order: the ModuleList whose every element has the map's marker."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and all(hasattr(b, fmap.marker) for b in module):
            return list(module)
    raise ValueError(f"no list of transformer blocks with a '{fmap.marker}' attribute in {type(model).__name__}")


# --- linear layers narrowed to a set of hidden channels (plain nn.Linear or PEFT LoRA) -------------------------
def _parts(linear: torch.nn.Module):
    """(frozen nn.Linear, [(lora_A, lora_B, dropout, scale), ...]) of a plain or PEFT-LoRA linear."""
    base = getattr(linear, "base_layer", linear)
    adapters = []
    if base is not linear and not linear.disable_adapters:
        if linear.merged:
            raise RuntimeError("sparselora: adapters are merged into the base weights; unmerge before training")
        for name in linear.active_adapters:
            if name not in linear.lora_A:
                continue
            if linear.use_dora.get(name):
                raise NotImplementedError("sparselora does not narrow DoRA layers")
            adapters.append((linear.lora_A[name], linear.lora_B[name], linear.lora_dropout[name],
                             linear.scaling[name]))
    return base, adapters


def output_channels(linear: torch.nn.Module, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``linear(x)[..., idx]``, computing only those output channels."""
    base, adapters = _parts(linear)
    bias = None if base.bias is None else base.bias.index_select(0, idx)
    y = F.linear(x, base.weight.index_select(0, idx), bias)
    for lora_a, lora_b, dropout, scale in adapters:
        y = y + F.linear(lora_a(dropout(x)), lora_b.weight.index_select(0, idx)) * scale
    return y


def input_channels(linear: torch.nn.Module, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``linear(h_full)`` where ``h_full`` equals ``h`` on channels ``idx`` and is zero elsewhere."""
    base, adapters = _parts(linear)
    y = F.linear(h, base.weight.index_select(1, idx), base.bias)
    for lora_a, lora_b, dropout, scale in adapters:
        y = y + lora_b(F.linear(dropout(h), lora_a.weight.index_select(1, idx))) * scale
    return y


# --- predictors ------------------------------------------------------------------------------------------------
PREDICTOR_KINDS = ("calibrated", "svd")
CALIBRATION_EXAMPLES = 64


def svd_factors(weight: torch.Tensor, rank: int, input_cov: torch.Tensor | None = None):
    """(A: in x r, B: r x out) with ``x A B`` a rank-r approximation of ``x W^T``, singular values split as
    square roots between the factors.

    Without ``input_cov`` this is the truncated SVD of W (the paper's predictor). With the covariance of the
    layer's real inputs it is the best rank-r approximation *on those inputs*: the SVD of Sigma^1/2 W^T, mapped
    back with Sigma^-1/2. The FFN inputs of these models are far from isotropic, so the weight-only SVD
    spends its rank on directions the inputs hardly use (docs/papers.md has the measurement)."""
    w = weight.detach().double()
    if input_cov is None:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = s[:rank].sqrt()
        a, b = vh[:rank].T * root, root[:, None] * u[:, :rank].T
    else:
        evals, evecs = torch.linalg.eigh(input_cov.double())
        evals = evals.clamp(min=evals.max().item() * 1e-6)
        cov_root = (evecs * evals.sqrt()) @ evecs.T
        cov_inv_root = (evecs * evals.rsqrt()) @ evecs.T
        u, s, vh = torch.linalg.svd(cov_root @ w.T, full_matrices=False)
        root = s[:rank].sqrt()
        a, b = cov_inv_root @ u[:, :rank] * root, root[:, None] * vh[:rank]
    return a.float().contiguous(), b.float().contiguous()


def calibration_batches(rows: list[dict], collator, examples: int = CALIBRATION_EXAMPLES,
                        batch_size: int = 16) -> list[dict]:
    """Inputs of the first ``examples`` training rows, in batches (the fixed subset: the same for every seed)."""
    rows = rows[:examples]
    gen = torch.Generator().manual_seed(0)
    return [{k: v for k, v in collator(rows[i:i + batch_size], generator=gen).items()
             if k in ("input_ids", "attention_mask")} for i in range(0, len(rows), batch_size)]


@torch.no_grad()
def ffn_input_covariances(model: torch.nn.Module, fmap: FFNMap, batches: list[dict]) -> dict[int, torch.Tensor]:
    """Per block, the uncentred covariance E[x x^T] of the FFN's input over the real tokens of ``batches``."""
    blocks = find_blocks(model, fmap)
    sums: dict[int, torch.Tensor] = {}
    counts = dict.fromkeys(range(len(blocks)), 0)
    state: dict = {}
    hooks = []
    for i, block in enumerate(blocks):
        def grab(module, args, i=i):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            if state.get("mask") is not None:
                x = x[state["mask"].reshape(-1).bool()]
            sums[i] = sums.get(i, 0) + x.T @ x
            counts[i] += x.shape[0]
        hooks.append(_get(block, fmap.ups[0]).register_forward_pre_hook(grab))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            state["mask"] = batch.get("attention_mask")
            model(**batch)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {i: sums[i] / counts[i] for i in sums}


def compute_predictors(model: torch.nn.Module, model_type: str, rank: int,
                       calibration: list[dict] | None = None) -> dict[str, torch.Tensor]:
    """Rank-``rank`` factors of every up-projection of every block: {"<layer>.<up>.A|B": tensor}. With
    ``calibration`` batches, the factors are fitted to the FFN inputs those batches produce."""
    fmap = ffn_map(model_type)
    covs = ffn_input_covariances(model, fmap, calibration) if calibration else {}
    out = {}
    for i, block in enumerate(find_blocks(model, fmap)):
        for j, path in enumerate(fmap.ups):
            base, _ = _parts(_get(block, path))
            width = min(base.weight.shape)
            if rank > width:
                raise ValueError(f"predictor rank {rank} exceeds the width {width} of layer {i} '{path}'")
            out[f"{i}.{j}.A"], out[f"{i}.{j}.B"] = svd_factors(base.weight, rank, covs.get(i))
    return out


def save_predictors(model_dir: str | Path, rank: int, kind: str, out_file: str | Path,
                    tokenized_dir: str | Path | None = None) -> None:
    """Compute the predictors of a fetched model folder and write them as safetensors (the predictor rule);
    ``calibrated`` ones read the first training examples of ``tokenized_dir``."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from lorabench.data import TRAIN, Collator, load_tokenized

    if kind not in PREDICTOR_KINDS:
        raise ValueError(f"predictor kind '{kind}' is not one of {', '.join(PREDICTOR_KINDS)}")
    config = AutoConfig.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir), use_safetensors=True, dtype=torch.float32)
    calibration = None
    if kind == "calibrated":
        rows = load_tokenized(tokenized_dir, TRAIN).to_list()
        calibration = calibration_batches(rows, Collator(AutoTokenizer.from_pretrained(str(model_dir))))
    tensors = compute_predictors(model, config.model_type, rank, calibration)
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    examples = CALIBRATION_EXAMPLES if calibration else 0
    save_file(tensors, str(out_file), metadata={"model_type": config.model_type, "rank": str(rank), "kind": kind,
                                                "calibration_examples": str(examples)})


def load_predictors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# --- the per-batch mechanism ------------------------------------------------------------------------------------
def kept_channels(width: int, sparsity: float) -> int:
    """Channels kept at ``sparsity`` (at least one)."""
    return max(1, int(round(width * (1.0 - sparsity))))


class FFNSparsity:
    """Installs narrowed FFN forwards on a model's blocks and picks the channels of every batch.

    ``sparsities[i]`` is the fraction of layer i's FFN channels skipped; 0 leaves the layer on its original
    code path. ``sparse`` switches all layers between sparse and dense (warm-up); blocks in eval mode run
    dense. ``force_channels`` (layer -> index tensor) replaces the predictor, for tests and oracle controls.
    """

    def __init__(self, model: torch.nn.Module, model_type: str, sparsities: list[float],
                 predictors: dict[str, torch.Tensor]):
        self.fmap = ffn_map(model_type)
        self.blocks = find_blocks(model, self.fmap)
        if len(sparsities) != len(self.blocks):
            raise ValueError(f"{len(sparsities)} sparsities for {len(self.blocks)} layers")
        self.sparsities = list(sparsities)
        self.sparse = True
        self.force_channels: dict[int, torch.Tensor] = {}
        self.token_mask: torch.Tensor | None = None
        self._factor_cache: dict = {}
        self.predictors = {}
        for i, s in enumerate(self.sparsities):
            if s > 0:
                self.predictors[i] = [(predictors[f"{i}.{j}.A"], predictors[f"{i}.{j}.B"])
                                      for j in range(len(self.fmap.ups))]
        self.widths = [_parts(_get(b, self.fmap.ups[0]))[0].weight.shape[0] for b in self.blocks]
        self._undo = [self.fmap.install(block, functools.partial(self._narrow, i))
                      for i, block in enumerate(self.blocks) if self.sparsities[i] > 0]
        # The real tokens of the batch (attention mask), so padding does not enter the predictor's scores.
        self._hook = model.register_forward_pre_hook(self._capture_mask, with_kwargs=True)

    def _capture_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self.token_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def remove(self) -> None:
        """Restore every block's original FFN forward."""
        for undo in self._undo:
            undo()
        self._undo = []
        self._hook.remove()

    def _mask_of(self, x: torch.Tensor) -> torch.Tensor | None:
        """The batch's (batch, seq) attention mask when it fits ``x``'s first two dimensions, else None (every
        position counts)."""
        mask = self.token_mask
        return mask if mask is not None and mask.shape == x.shape[:2] else None

    def _factors(self, layer: int, dtype: torch.dtype, device: torch.device) -> list[tuple]:
        """Per up-projection of ``layer``: (A^T, B^T, bias as a column or None) in ``dtype``, cast once."""
        key = (layer, dtype, device)
        if key not in self._factor_cache:
            block, factors = self.blocks[layer], []
            for path, (a, b) in zip(self.fmap.ups, self.predictors[layer]):
                bias = _parts(_get(block, path))[0].bias
                factors.append((a.T.to(device, dtype).contiguous(), b.T.to(device, dtype).contiguous(),
                                None if bias is None else bias.detach().to(device, dtype)[:, None]))
            self._factor_cache[key] = factors
        return self._factor_cache[key]

    @torch.no_grad()
    def predicted_scores(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The predictor's score of every hidden channel of ``layer`` for the batch ``x``: the L2 norm, over the
        batch's real tokens, of the hidden activation computed through the rank-r factors.

        It runs in the precision the layer's matmuls run in (bf16 under autocast) and channels-by-tokens, so the
        norm reduces along contiguous memory: under half the cost of an fp32, tokens-by-channels computation,
        and the same choice of channels but for bf16 rounding at the boundary (docs/performance.md). The cast
        factors are cached: they and the frozen biases never change during training."""
        device = x.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else x.dtype
        tokens = x.reshape(-1, x.shape[-1])
        mask = self._mask_of(x)
        if mask is not None and not bool(mask.all()):
            tokens = tokens[mask.reshape(-1).bool()]  # padding does not enter the scores
        tokens_t = tokens.to(dtype).T
        with torch.autocast(device.type, enabled=False):
            pre = [b_t @ (a_t @ tokens_t) if bias is None else torch.addmm(bias, b_t, a_t @ tokens_t)
                   for a_t, b_t, bias in self._factors(layer, dtype, device)]  # channels x tokens
            hidden = self.fmap.hidden(self.blocks[layer], pre)
            return torch.linalg.vector_norm(hidden, dim=1, dtype=torch.float32)

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
        ups = [output_channels(_get(block, path), x, idx) for path in self.fmap.ups]
        return input_channels(_get(block, self.fmap.down), self.fmap.hidden(block, ups), idx)

    def _dense_capture(self, model: torch.nn.Module, batch: dict):
        """One dense forward; per sparse layer, the FFN input and the true hidden activation."""
        inputs, hidden, hooks = {}, {}, []
        for i in self.predictors:
            block = self.blocks[i]

            def grab_input(module, args, i=i):
                inputs[i] = args[0].detach()

            def grab_hidden(module, args, i=i):
                hidden[i] = args[0].detach()
            hooks.append(_get(block, self.fmap.ups[0]).register_forward_pre_hook(grab_input))
            hooks.append(_get(block, self.fmap.down).register_forward_pre_hook(grab_hidden))
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
