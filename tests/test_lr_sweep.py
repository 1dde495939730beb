"""The learning-rate sweep's names and its choice, on a summary whose best rate is known."""

import pandas as pd

from lorabench.analysis.lr_choice import choice_table
from lorabench.config.lr_grid import expand_grid, grid_variants, lr_tag


def test_rate_tags_are_path_safe_and_distinct():
    assert [lr_tag(x) for x in (3e-4, 1e-3, 2.5e-5, 0.1)] == ["3e-4", "1e-3", "2p5e-5", "1e-1"]
    assert list(grid_variants({"lora": [3e-4, 1e-3]})) == ["lora_lr3e-4", "lora_lr1e-3"]


def test_a_swept_entry_becomes_one_variant_per_rate_and_others_stay():
    methods = {"lora": {"lr": 1e-3, "r": 8}, "hira": {"lr": 5e-3, "r": 8}}
    out = expand_grid(methods, {"lora": [3e-4, 3e-3]})
    assert out == {"hira": {"lr": 5e-3, "r": 8}, "lora_lr3e-4": {"lr": 3e-4, "r": 8, "type": "lora"},
                   "lora_lr3e-3": {"lr": 3e-3, "r": 8, "type": "lora"}}


def test_the_choice_is_the_best_mean_over_seeds_per_dataset_and_direction():
    rows = []
    for dataset, task, metric, by_lr in [
        ("sst2", "classification", "accuracy", {3e-4: [0.80, 0.82], 1e-3: [0.85, 0.83], 3e-3: [0.86, 0.70]}),
        ("wikitext2", "language_modeling", "perplexity", {3e-4: [40.0, 41.0], 1e-3: [35.0, 36.0], 3e-3: [38.0, 30.0]}),
    ]:
        for lr, values in by_lr.items():
            for seed, v in enumerate(values):
                rows.append({"dataset": dataset, "task": task, "method": f"lora_lr{lr_tag(lr)}", "seed": seed,
                             metric: v, "final_train_loss": 0.5, "eval_split": "train[held out: 10]"})
    rows.append({"dataset": "sst2", "task": "classification", "method": "unswept", "seed": 0, "accuracy": 0.99,
                 "final_train_loss": 0.1, "eval_split": "train[held out: 10]"})
    table = choice_table(pd.DataFrame(rows), {"lora": [3e-4, 1e-3, 3e-3]})
    assert len(table) == 6 and set(table["method"]) == {"lora"}
    chosen = table[table["chosen"]].set_index("dataset")["lr"]
    assert chosen["sst2"] == 1e-3  # mean 0.84 beats 3e-3's 0.78 despite its single 0.86
    assert chosen["wikitext2"] == 3e-3  # lower perplexity is better: 34 < 35.5
    assert (table["seeds"] == 2).all() and table["ci95_low"].notna().all()


def test_rates_sharing_one_efficiency_measurement_each_get_its_row(tmp_path):
    from lorabench.analysis.aggregate import efficiency_table
    from lorabench.io import write_json

    write_json(tmp_path / "lora_lr1e-3.json", {"latency_ms": 5.0, "peak_infer_mem_mb": 80.0})
    table = efficiency_table({"sst2/lora_lr1e-3": tmp_path / "lora_lr1e-3.json",
                              "sst2/lora_lr3e-3": tmp_path / "lora_lr1e-3.json"})
    assert sorted(table["method"]) == ["lora_lr1e-3", "lora_lr3e-3"]
    assert (table["latency_ms"] == 5.0).all() and (table["dataset"] == "sst2").all()
