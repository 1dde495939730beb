"""The predictors of SparseLoRA's contextual sparsity: rank-r factors of the frozen linears whose outputs decide
which channels a batch computes (the FFN's up-projections; attention's q, k and v), computed once per model by
the predictor rule and cached under resources/.

``calibrated`` factors are the best rank-r approximation on the layer's real inputs (the first training
examples); ``svd`` ones are the paper's truncated SVD of the weights alone.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lorabench.methods.sparselora.attention import ATTN_MAPS
from lorabench.methods.sparselora.channels import linear_parts, submodule
from lorabench.methods.sparselora.ffn import ffn_map, find_blocks

PREDICTOR_KINDS = ("calibrated", "svd")
PREDICTOR_CONTENTS = "ffn up-projections; attention q, k, v"
"""What a predictor file holds (the predictor rule's params: a change writes cached files again)."""


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


@torch.no_grad()
def input_covariances(model: torch.nn.Module, blocks: list[torch.nn.Module], paths: list[str],
                      batches: list[dict]) -> dict[str, dict[int, torch.Tensor]]:
    """Per path and block, the uncentred covariance E[x x^T] of the input of the linear at that path over the
    real tokens of ``batches``, all from one pass over them."""
    sums: dict[tuple[str, int], torch.Tensor] = {}
    counts: dict[tuple[str, int], int] = {}
    state: dict = {}
    hooks = []
    for i, block in enumerate(blocks):
        for path in paths:
            def grab(module, args, key=(path, i)):
                x = args[0].detach().double().reshape(-1, args[0].shape[-1])
                if state.get("mask") is not None:
                    x = x[state["mask"].reshape(-1).bool()]
                sums[key] = sums.get(key, 0) + x.T @ x
                counts[key] = counts.get(key, 0) + x.shape[0]
            hooks.append(submodule(block, path).register_forward_pre_hook(grab))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device  # collated on the CPU; the model may already be on a GPU
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            state["mask"] = batch.get("attention_mask")
            model(**batch)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    covs: dict[str, dict[int, torch.Tensor]] = {path: {} for path in paths}
    for (path, i), total in sums.items():
        covs[path][i] = total / counts[(path, i)]
    return covs


def compute_predictors(model: torch.nn.Module, model_type: str, rank: int,
                       calibration: list[dict] | None = None) -> dict[str, torch.Tensor]:
    """Rank-``rank`` factors of every up-projection of every block ({"<layer>.<up>.A|B": tensor}) and, where the
    architecture has an attention channel map, of every q, k and v projection ({"<layer>.attn.q.A", ...}). With
    ``calibration`` batches, the factors are fitted to the inputs those batches produce."""
    fmap = ffn_map(model_type)
    blocks = find_blocks(model, fmap)
    # key -> (the linear's path, the path whose input it reads: the FFN's or the attention's, for calibration)
    linears = {f"{j}": (path, fmap.ups[0]) for j, path in enumerate(fmap.ups)}
    amap = ATTN_MAPS.get(model_type)
    if amap is not None:
        linears.update({f"attn.{name}": (path, amap.q) for name, path in amap.projections().items()})
    inputs = sorted({reads for _, reads in linears.values()})
    covs = input_covariances(model, blocks, inputs, calibration) if calibration else {}
    out = {}
    for i, block in enumerate(blocks):
        for key, (path, reads) in linears.items():
            base, _ = linear_parts(submodule(block, path))
            width = min(base.weight.shape)
            if rank > width:
                raise ValueError(f"predictor rank {rank} exceeds the width {width} of layer {i} '{path}'")
            out[f"{i}.{key}.A"], out[f"{i}.{key}.B"] = svd_factors(base.weight, rank, covs.get(reads, {}).get(i))
    return out


def save_predictors(model_dir: str | Path, rank: int, kind: str, out_file: str | Path,
                    tokenized_dir: str | Path | None = None) -> None:
    """Compute the predictors of a fetched model folder and write them as safetensors (the predictor rule);
    ``calibrated`` ones read the first training examples of ``tokenized_dir``."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from lorabench.loading.data import CALIBRATION_EXAMPLES, TRAIN, Collator, calibration_batches, load_tokenized

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
                                                "calibration_examples": str(examples),
                                                "contents": PREDICTOR_CONTENTS})


def load_predictors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
