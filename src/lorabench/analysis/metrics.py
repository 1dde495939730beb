"""Task metrics computed from per-example outputs (pure functions, tested on hand-computed cases)."""

from __future__ import annotations

import math

import numpy as np


def accuracy(labels, preds) -> float:
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.size == 0:
        raise ValueError("accuracy of an empty set")
    return float((labels == preds).mean())


def macro_f1(labels, preds) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    scores = []
    for c in np.union1d(labels, preds):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        denom = 2 * tp + fp + fn
        scores.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(scores))


def perplexity(nll_sum, token_count) -> float:
    """exp of the mean token negative log-likelihood (natural log), pooled over windows."""
    total_tokens = float(np.sum(token_count))
    if total_tokens <= 0:
        raise ValueError("perplexity over zero tokens")
    return float(math.exp(float(np.sum(nll_sum)) / total_tokens))


def primary_metric(task: str) -> tuple[str, bool]:
    """(column, higher is better) of a task's headline metric."""
    return ("accuracy", True) if task == "classification" else ("perplexity", False)


def variant_columns(df, traits: dict):
    """A copy of a summary with the columns that tell variants apart: ``quantize`` (full precision is 'none';
    read from the bits of the base where the summary lacks the column) and, from each method type's ``traits``
    (Method.traits, passed by the workflow: the analysis never imports the methods), ``family`` (the type a
    preset belongs to), ``untrained`` (a reference level, not a method) and ``prunes_adapter``. A type without
    traits is its own family, trained, unpruned."""
    import pandas as pd

    df = df.copy()
    if "method_type" not in df:
        df["method_type"] = df["method"]
    if "quantize" in df:
        df["quantize"] = df["quantize"].fillna("none")
    else:
        bits = df["base_weight_bits"].fillna(32) if "base_weight_bits" in df else pd.Series(32, index=df.index)
        df["quantize"] = ["none" if b >= 16 else f"{int(b)}-bit" for b in bits]
    types = df["method_type"]
    df["family"] = types.map(lambda t: traits.get(t, {}).get("family") or t)
    df["untrained"] = types.map(lambda t: bool(traits.get(t, {}).get("untrained", False))).astype(bool)
    df["prunes_adapter"] = types.map(lambda t: bool(traits.get(t, {}).get("prunes_adapter", False))).astype(bool)
    return df
