import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from lorabench.loading.data import (Collator, fixed_subset, length_grouped_batches, lm_blocks, load_tokenized,
                                    split_rows, tokenize_dataset, truncated_ids)

from conftest import MINILM, SNAPSHOTS


def test_fixed_subset_is_seeded_sorted_and_complete_when_none():
    a, b = fixed_subset(100, 10, 7), fixed_subset(100, 10, 7)
    assert (a == b).all() and list(a) == sorted(a) and len(set(a)) == 10
    assert not (fixed_subset(100, 10, 8) == a).all()
    assert (fixed_subset(5, None, 0) == np.arange(5)).all()


def test_lm_blocks_disjoint_and_strided():
    ids = list(range(10))
    x, y = lm_blocks(ids, 4, 4, None)
    assert x == [[0, 1, 2, 3], [4, 5, 6, 7]] and y == x
    x, y = lm_blocks(ids, 4, 2, 2)
    assert x == [[0, 1, 2, 3], [2, 3, 4, 5]]
    assert y[1] == [-100, -100, 4, 5]  # only the last `stride` tokens of later windows are scored


def test_length_grouped_batches_cover_everything_once_and_depend_on_seed():
    lengths = list(np.random.default_rng(0).integers(5, 60, size=103))
    b1 = length_grouped_batches(lengths, 8, np.random.default_rng(1))
    b2 = length_grouped_batches(lengths, 8, np.random.default_rng(1))
    b3 = length_grouped_batches(lengths, 8, np.random.default_rng(2))
    assert b1 == b2 and b1 != b3
    assert sorted(i for b in b1 for i in b) == list(range(103))
    # grouped by length: padding inside batches is far below random batching
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in b1)
    rand = np.random.default_rng(1).permutation(103)
    pad_rand = sum(max(lengths[i] for i in rand[s:s + 8]) * len(rand[s:s + 8]) - sum(lengths[i] for i in rand[s:s + 8])
                   for s in range(0, 103, 8))
    assert pad < pad_rand / 2


def test_collator_pads_and_masks_reproducibly():
    tok = AutoTokenizer.from_pretrained(MINILM)
    rows = [{"input_ids": tok("a short one")["input_ids"], "labels": 1},
            {"input_ids": tok("a somewhat longer sentence here")["input_ids"], "labels": 0}]
    batch = Collator(tok)(rows)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].sum() == len(rows[0]["input_ids"])
    assert batch["labels"].tolist() == [1, 0]
    lm_rows = [{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in rows]
    mlm = Collator(tok, masked_lm=True, mlm_probability=0.5)
    m1 = mlm(lm_rows, generator=torch.Generator().manual_seed(3))
    m2 = mlm(lm_rows, generator=torch.Generator().manual_seed(3))
    assert torch.equal(m1["input_ids"], m2["input_ids"]) and torch.equal(m1["labels"], m2["labels"])
    scored = m1["labels"] != -100
    assert scored.any() and not scored[:, 0].any()  # [CLS] is never masked


def test_tokenize_from_snapshot(tmp_path):
    raw = _sst2_raw(tmp_path)
    ds = {"task": "classification", "text_field": "sentence", "label_field": "label", "train_split": "train",
          "eval_split": "validation", "train_size": 50, "eval_size": None, "max_length": 16, "holdout_size": None,
          "truncation": "head", "head_fraction": 0.25}
    tokenize_dataset(ds, MINILM, raw, 1234, tmp_path / "tok")
    train, ev = load_tokenized(tmp_path / "tok", "train"), load_tokenized(tmp_path / "tok", "eval")
    assert len(train) == 50 and len(ev) == 872  # full GLUE dev
    assert max(len(x) for x in train["input_ids"]) <= 16
    assert set(ev["labels"]) == {0, 1}


def _sst2_raw(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    src = SNAPSHOTS / "datasets" / "stanfordnlp" / "sst2" / "data"
    for split in ("train", "validation"):
        pd.read_parquet(src / f"{split}-00000-of-00001.parquet").to_parquet(raw / f"{split}.parquet")
    return raw


def test_holdout_is_disjoint_from_training_and_leaves_the_training_subset_unchanged(tmp_path):
    train, held = split_rows(1000, 200, 100, 1234, "datasets.x.holdout_size")
    assert len(train) == 200 and len(held) == 100 and not set(train) & set(held)
    assert list(train) == list(fixed_subset(1000, 200, 1234))  # the same training examples as without a holdout
    raw = _sst2_raw(tmp_path)
    ds = {"task": "classification", "text_field": "sentence", "label_field": "label", "train_split": "train",
          "eval_split": "validation", "train_size": 60, "eval_size": None, "max_length": 16, "holdout_size": 40,
          "truncation": "head", "head_fraction": 0.25}
    tokenize_dataset(ds, MINILM, raw, 1234, tmp_path / "tok", "sst2")
    tr, ev, held = (load_tokenized(tmp_path / "tok", part) for part in ("train", "eval", "heldout"))
    assert len(tr) == 60 and len(held) == 40 and not set(tr["example_id"]) & set(held["example_id"])
    assert len(ev) == 872  # the held-out curve reads the slice; the reported metric stays on the dev sentences
    tokenize_dataset({**ds, "scored_on": "holdout"}, MINILM, raw, 1234, tmp_path / "swept", "sst2")
    ev = load_tokenized(tmp_path / "swept", "eval")  # a learning-rate sweep: scored on the slice instead
    assert list(ev["example_id"]) == list(held["example_id"]) and list(ev["input_ids"]) == list(held["input_ids"])


def test_a_train_split_too_small_for_its_holdout_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="datasets.sst2.holdout_size.*100 examples"):
        split_rows(100, 80, 30, 0, "datasets.sst2.holdout_size")


def test_head_tail_truncation_keeps_the_start_and_the_end():
    tok = AutoTokenizer.from_pretrained(MINILM)
    words = [f"w{i}" for i in range(200)]
    text = " ".join(words)
    (ids,) = truncated_ids(tok, [text], 42, "head_tail", 0.25)
    assert len(ids) == 42 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    full = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[1:11] == full[:10] and ids[11:-1] == full[-30:]  # 40 tokens of budget: 10 from the start, 30 from the end
    (head,) = truncated_ids(tok, [text], 42, "head", 0.25)
    assert head[1:-1] == full[:40]
    (short,) = truncated_ids(tok, ["a short review"], 42, "head_tail", 0.25)
    assert short == tok("a short review")["input_ids"]  # nothing cut when it fits
