"""Datasets: fetch into resources/, tokenize once per (dataset, model), batch with dynamic padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lorabench.hub import download_repo, snapshot_path
from lorabench.utils import atomic_dir, write_json

TRAIN, EVAL = "train", "eval"


def fetch_dataset(repo: str, config_name: str | None, splits: list[str], snapshots: str, out_dir) -> None:
    """Write the named splits of a hub dataset as ``<out_dir>/<split>.parquet`` (atomically)."""
    import datasets

    src = snapshot_path(snapshots, "datasets", repo) if snapshots else download_repo(repo, "dataset")
    loaded = datasets.load_dataset(str(src), config_name)
    missing = [s for s in splits if s not in loaded]
    if missing:
        raise ValueError(
            f"dataset '{repo}' has no split(s) {missing}; it has {list(loaded)}. "
            "Set datasets.<name>.train_split / eval_split to one of those."
        )
    with atomic_dir(out_dir) as tmp:
        for split in dict.fromkeys(splits):
            loaded[split].to_parquet(str(Path(tmp) / f"{split}.parquet"))


def fixed_subset(n_rows: int, size: int | None, seed: int) -> np.ndarray:
    """Row indices of the fixed subset every run uses: a seeded shuffle, first ``size``, in original order."""
    if size is None or size >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[:size])


def lm_blocks(ids: list[int], block: int, stride: int, limit: int | None, first_window_full: bool = True):
    """Windows of ``block`` tokens every ``stride`` tokens; labels score only the last ``stride`` tokens.

    With stride == block the windows are disjoint blocks. With stride < block each scored token sees at
    least block - stride tokens of left context (the first window scores all its tokens). Only full
    windows are kept, so every window has the same length.
    """
    inputs, labels = [], []
    for begin in range(0, max(len(ids) - block + 1, 0), stride):
        window = ids[begin : begin + block]
        lab = list(window)
        if begin > 0 or not first_window_full:
            lab[: block - stride] = [-100] * (block - stride)
        inputs.append(window)
        labels.append(lab)
        if limit is not None and len(inputs) >= limit:
            break
    return inputs, labels


def tokenize_dataset(ds: dict, model_dir, raw_dir, subset_seed: int, out_dir) -> None:
    """Tokenize the train and eval subsets of one dataset for one model; write ``out_dir/{train,eval}``."""
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    parts, meta = {}, {}
    for role, split, size in ((TRAIN, ds["train_split"], ds["train_size"]), (EVAL, ds["eval_split"], ds["eval_size"])):
        df = pd.read_parquet(Path(raw_dir) / f"{split}.parquet")
        if ds["task"] == "classification":
            rows = fixed_subset(len(df), size, subset_seed)
            sub = df.iloc[rows]
            enc = tok(list(sub[ds["text_field"]]), truncation=True, max_length=ds["max_length"])
            parts[role] = datasets.Dataset.from_dict(
                {"example_id": rows.tolist(), "input_ids": enc["input_ids"], "labels": sub[ds["label_field"]].tolist()}
            )
        else:
            # WikiText rows are lines; joined as in the usual perplexity recipe, then cut into windows.
            text = "\n\n".join(t for t in df[ds["text_field"]] if t is not None)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            stride = ds["max_length"] if role == TRAIN else ds["stride"]
            inputs, labels = lm_blocks(ids, ds["max_length"], stride, size)
            if not inputs:
                raise ValueError(f"split '{split}' has fewer than max_length={ds['max_length']} tokens")
            parts[role] = datasets.Dataset.from_dict(
                {"example_id": list(range(len(inputs))), "input_ids": inputs, "labels": labels}
            )
        lengths = [len(x) for x in parts[role]["input_ids"]]
        meta[role] = {"split": split, "examples": len(lengths), "tokens": int(sum(lengths)),
                      "mean_length": float(np.mean(lengths))}
    with atomic_dir(out_dir) as tmp:
        for role, part in parts.items():
            part.save_to_disk(str(Path(tmp) / role))
        write_json(Path(tmp) / "meta.json", meta)


def load_tokenized(path, role: str):
    import datasets

    return datasets.load_from_disk(str(Path(path) / role)).with_format("python")


def length_grouped_batches(lengths, batch_size: int, rng: np.random.Generator, group: int = 50) -> list[list[int]]:
    """Seeded batches of similar length (less padding), in a random order of batches.

    Examples are shuffled, cut into groups of ``group`` batches, sorted by length inside each group,
    then split into batches whose order is shuffled again (as Hugging Face's LengthGroupedSampler).
    """
    perm = rng.permutation(len(lengths))
    batches = []
    span = batch_size * group
    for start in range(0, len(perm), span):
        chunk = sorted(perm[start : start + span], key=lambda i: -lengths[i])
        batches += [list(map(int, chunk[i : i + batch_size])) for i in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab: int, prob: float,
                generator: torch.Generator):
    """BERT masking (80% [MASK], 10% random, 10% kept) with an explicit generator, so masks are reproducible."""
    labels = input_ids.clone()
    chosen = (torch.rand(input_ids.shape, generator=generator) < prob) & ~special
    labels[~chosen] = -100
    masked = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    masked[chosen & (roll < 0.8)] = mask_id
    rand_pos = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[rand_pos] = torch.randint(vocab, input_ids.shape, generator=generator)[rand_pos]
    return masked, labels


class Collator:
    """Pads a list of examples to the longest one; for masked LMs replaces labels by a seeded mask."""

    def __init__(self, tokenizer, masked_lm: bool = False, mlm_probability: float = 0.15):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.masked_lm = masked_lm
        self.mlm_probability = mlm_probability
        self.mask_id = tokenizer.mask_token_id
        self.vocab = len(tokenizer)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def __call__(self, examples: list[dict], generator: torch.Generator | None = None) -> dict:
        width = max(len(e["input_ids"]) for e in examples)
        n = len(examples)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            attn[i, : len(e["input_ids"])] = 1
        first = examples[0]["labels"]
        if isinstance(first, list):
            labels = torch.full((n, width), -100, dtype=torch.long)
            for i, e in enumerate(examples):
                labels[i, : len(e["labels"])] = torch.tensor(e["labels"])
        else:
            labels = torch.tensor([e["labels"] for e in examples])
        if self.masked_lm:
            special = torch.isin(ids, self.special_ids) | (attn == 0)
            ids, labels = mask_tokens(ids, special, self.mask_id, self.vocab, self.mlm_probability, generator)
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}
