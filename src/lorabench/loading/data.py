"""Datasets: fetch into resources/, tokenize once per (dataset, model), batch with dynamic padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lorabench.io import atomic_dir, snapshot_path, write_json
from lorabench.loading.hub import download_repo

TRAIN, EVAL, HELDOUT = "train", "eval", "heldout"


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


def _check_holdout(n_rows: int, train_size: int | None, holdout_size: int, key: str) -> None:
    if holdout_size >= n_rows or (train_size or 0) + holdout_size > n_rows:
        raise ValueError(f"config key '{key}': the train split has {n_rows} examples, too few to hold out "
                         f"{holdout_size} besides train_size {train_size}; lower holdout_size or train_size")


def _split_windows(tok, raw_dir, ds: dict, split: str, stride: int, limit: int | None):
    """(inputs, labels) windows of a language-modelling split. WikiText rows are lines: joined as in the usual
    perplexity recipe, then cut into windows (``lm_blocks``)."""
    df = pd.read_parquet(Path(raw_dir) / f"{split}.parquet")
    ids = tok("\n\n".join(t for t in df[ds["text_field"]] if t is not None), add_special_tokens=False)["input_ids"]
    inputs, labels = lm_blocks(ids, ds["max_length"], stride, limit)
    if not inputs:
        raise ValueError(f"split '{split}' has fewer than max_length={ds['max_length']} tokens")
    return inputs, labels


def split_rows(n_rows: int, train_size: int | None, holdout_size: int | None, seed: int,
                key: str) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows) of a train split, disjoint, each in original order. The training subset is
    the same as ``fixed_subset`` gives without a holdout (the first rows of the seeded shuffle); the holdout is
    taken from the end of that shuffle. ``key`` names the setting in the error raised when they do not fit."""
    if not holdout_size:
        return fixed_subset(n_rows, train_size, seed), np.arange(0)
    _check_holdout(n_rows, train_size, holdout_size, key)
    perm = np.random.default_rng(seed).permutation(n_rows)
    train = perm[: train_size if train_size else n_rows - holdout_size]
    return np.sort(train), np.sort(perm[n_rows - holdout_size:])


def truncated_ids(tok, texts: list[str], max_length: int, truncation: str, head_fraction: float) -> list[list[int]]:
    """Token ids of ``texts`` cut to ``max_length`` with the tokenizer's special tokens: the first tokens
    ('head', the tokenizer's own truncation), or the first ``head_fraction`` of the budget and the rest from
    the end ('head_tail')."""
    if truncation == "head":
        return tok(texts, truncation=True, max_length=max_length)["input_ids"]
    # The tokenizer's special tokens around a text, read off one encoded word (transformers 5's fast
    # tokenizers have no build_inputs_with_special_tokens).
    word = tok("a", add_special_tokens=False)["input_ids"]
    framed = tok("a")["input_ids"]
    at = next(i for i in range(len(framed)) if framed[i:i + len(word)] == word)
    prefix, suffix = framed[:at], framed[at + len(word):]
    budget = max_length - len(prefix) - len(suffix)
    head = round(head_fraction * budget)
    out = []
    for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        if len(ids) > budget:
            ids = ids[:head] + ids[len(ids) - (budget - head):]
        out.append(prefix + ids + suffix)
    return out


def heldout_split(ds: dict) -> str:
    """The name of the slice held out of a dataset's train split (``holdout_size``)."""
    return f"{ds['train_split']}[held out: {ds['holdout_size']}]"


def scored_on_holdout(ds: dict) -> bool:
    """Whether the reported metric comes from the held-out slice (``scored_on: holdout``, what a learning-rate
    sweep needs) rather than the eval split."""
    return ds.get("scored_on") == "holdout"


def evaluated_split(ds: dict) -> str:
    """The split a dataset's reported metric comes from: its eval split, or the slice held out of its train
    split (``scored_on: holdout``, a learning-rate sweep)."""
    return heldout_split(ds) if scored_on_holdout(ds) else ds["eval_split"]


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


def tokenize_dataset(ds: dict, model_dir, raw_dir, subset_seed: int, out_dir, name: str = "<dataset>") -> None:
    """Tokenize the train and eval subsets of one dataset (config key ``name``) for one model; write
    ``out_dir/{train,eval}``. With ``holdout_size``, ``out_dir/heldout`` holds that slice of the train split
    (the held-out curve is scored there); with ``scored_on: holdout`` the eval part is that slice too."""
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    holdout_key = f"datasets.{name}.holdout_size"
    parts, meta = {}, {}
    if ds["task"] == "classification":
        train_df = pd.read_parquet(Path(raw_dir) / f"{ds['train_split']}.parquet")
        train_rows, held_rows = split_rows(len(train_df), ds["train_size"], ds["holdout_size"], subset_seed,
                                           holdout_key)
        sources = {TRAIN: (train_df, train_rows)}
        if ds["holdout_size"]:
            sources[HELDOUT] = (train_df, held_rows)
        if scored_on_holdout(ds):
            sources[EVAL] = sources[HELDOUT]
        else:
            eval_df = pd.read_parquet(Path(raw_dir) / f"{ds['eval_split']}.parquet")
            sources[EVAL] = (eval_df, fixed_subset(len(eval_df), ds["eval_size"], subset_seed))
        for role, (df, rows) in sources.items():
            sub = df.iloc[rows]
            ids = truncated_ids(tok, list(sub[ds["text_field"]]), ds["max_length"], ds["truncation"],
                                ds["head_fraction"])
            parts[role] = datasets.Dataset.from_dict(
                {"example_id": rows.tolist(), "input_ids": ids, "labels": sub[ds["label_field"]].tolist()})
    else:
        blocks, block_labels = _split_windows(tok, raw_dir, ds, ds["train_split"], ds["max_length"], None)
        windows = {}
        if ds["holdout_size"]:
            # Held-out windows: the last blocks of the train split, disjoint from the first train_size.
            _check_holdout(len(blocks), ds["train_size"], ds["holdout_size"], holdout_key)
            keep = len(blocks) - ds["holdout_size"]
            held = blocks[keep:]
            blocks, block_labels = blocks[:keep], block_labels[:keep]
            windows[HELDOUT] = (held, [list(b) for b in held])
        if scored_on_holdout(ds):
            windows[EVAL] = windows[HELDOUT]
        else:
            windows[EVAL] = _split_windows(tok, raw_dir, ds, ds["eval_split"], ds["stride"], ds["eval_size"])
        size = ds["train_size"] or len(blocks)
        windows[TRAIN] = (blocks[:size], block_labels[:size])
        for role, (inputs, labels) in windows.items():
            parts[role] = datasets.Dataset.from_dict(
                {"example_id": list(range(len(inputs))), "input_ids": inputs, "labels": labels})
    names = {TRAIN: ds["train_split"], EVAL: evaluated_split(ds), HELDOUT: heldout_split(ds)}
    for role in parts:
        split = names[role]
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


#: Training rows a method may fit something to before training (SparseLoRA's calibrated predictor).
CALIBRATION_EXAMPLES = 64


def calibration_batches(rows: list[dict], collator, examples: int = CALIBRATION_EXAMPLES,
                        batch_size: int = 16) -> list[dict]:
    """Inputs of the first ``examples`` training rows, in batches (the fixed subset: the same for every seed)."""
    rows = rows[:examples]
    gen = torch.Generator().manual_seed(0)
    return [{k: v for k, v in collator(rows[i:i + batch_size], generator=gen).items()
             if k in ("input_ids", "attention_mask")} for i in range(0, len(rows), batch_size)]
