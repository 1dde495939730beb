"""Evaluation: accuracy and macro-F1 for classification, perplexity for language modelling.

Per-example outputs (predictions, or per-window NLL and token counts) are returned too: the
significance tests pair methods on the same examples.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F

from lorabench.analysis import metrics
from lorabench.runtime.precision import FP32, Precision


@torch.no_grad()
def evaluate(model, rows: list[dict], collator, task: str, lm_kind: str | None, batch_size: int,
             mask_seed: int, device: torch.device, precision: Precision = FP32) -> tuple[dict, pd.DataFrame]:
    """Metrics of ``model`` on ``rows`` under ``precision``'s autocast (none in fp32), and per-example outputs."""
    model.to(device)
    model.eval()
    mask_gen = torch.Generator().manual_seed(mask_seed)  # the same masks for every method
    if task == "classification":  # longest first: batches of similar length pad little (the order is the same
        rows = sorted(rows, key=lambda r: -len(r["input_ids"]))  # for every method; outputs carry example_id)
    records = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = collator(chunk, generator=mask_gen)
        labels = batch.pop("labels")
        with precision.autocast():
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        logits = logits.float().cpu()
        ids = [r["example_id"] for r in chunk]
        if task == "classification":
            preds = logits.argmax(-1)
            records += [{"example_id": i, "label": int(y), "pred": int(p)} for i, y, p in zip(ids, labels, preds)]
            continue
        if lm_kind == "causal":  # token t predicts token t+1
            logits, labels = logits[:, :-1], labels[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        counts = (labels != -100).sum(1)
        records += [{"example_id": i, "nll_sum": float(s), "tokens": int(c)} for i, s, c in zip(ids, nll.sum(1), counts)]
    per_example = pd.DataFrame.from_records(records).sort_values("example_id", ignore_index=True)
    if task == "classification":
        result = {
            "accuracy": metrics.accuracy(per_example["label"], per_example["pred"]),
            "macro_f1": metrics.macro_f1(per_example["label"], per_example["pred"]),
        }
    else:
        result = {
            "perplexity": metrics.perplexity(per_example["nll_sum"], per_example["tokens"]),
            "eval_tokens": int(per_example["tokens"].sum()),
            "perplexity_kind": lm_kind,
        }
    result["eval_examples"] = len(per_example)
    return result, per_example
