"""The smoke config through real Snakemake: every dataset and method, metrics in range, and reruns that
touch only what a config change invalidates."""

import json
import math
import re

import pandas as pd
import pytest
import yaml

from conftest import REPO, run_pairs, smoke_config, snakemake, write_config

pytestmark = pytest.mark.e2e


def test_summary_has_every_dataset_and_method_with_valid_metrics(smoke_run):
    cfg = smoke_config()
    df = pd.read_csv(smoke_run / "results" / "summary.csv")
    pairs = run_pairs(cfg)
    assert len(df) == len(pairs) * len(cfg["seeds"]) and set(zip(df["dataset"], df["method"])) == pairs
    assert len(pairs) < len(cfg["datasets"]) * len(cfg["methods"])  # variants restricted to some datasets
    assert set(df["dataset"]) == set(cfg["datasets"]) and set(df["method"]) == set(cfg["methods"])
    cls = df[df["task"] == "classification"]
    assert cls["accuracy"].between(0, 1).all() and cls["macro_f1"].between(0, 1).all()
    lm = df[df["task"] == "language_modeling"]
    assert (lm["perplexity"] > 1).all() and lm["perplexity"].map(math.isfinite).all()
    assert (lm["train_split"] == "validation").all()  # the snapshot lacks WikiText-2 train; recorded
    base, df = df[df["method"] == "base"], df[df["method"] != "base"]
    for col in ("train_time_s", "train_time_per_epoch_s", "peak_train_mem_mb", "trainable_params", "total_params"):
        assert (df[col] > 0).all(), col
    # the untrained base: evaluated on the same windows, nothing trained, no training phase to measure
    assert list(base["dataset"]) == ["wikitext2"] and (base["train_steps"] == 0).all()
    assert (base["trainable_params"] == 0).all() and base["peak_train_mem_mb"].isna().all()
    assert base["perplexity"].iloc[0] > 1 and (base["total_params"] == lm["total_params"].min()).all()
    assert (df["trainable_params"] <= df["total_params"]).all()
    full = df[df["method"] == "full_ft"].set_index("dataset")["trainable_params"]
    lora = df[df["method"] == "lora"].set_index("dataset")["trainable_params"]
    assert (lora < full / 10).all()
    # units are in the column names
    assert {"train_time_s", "peak_train_mem_mb", "cost_usd", "device_hours"} <= set(df.columns)


def test_run_outputs_and_figures_exist(smoke_run):
    run = smoke_run / "results" / "runs" / "sst2" / "lora" / "seed0"
    assert (run / "model" / "adapter_model.safetensors").stat().st_size > 0
    preds = pd.read_csv(run / "predictions.csv")
    assert {"example_id", "label", "pred"} <= set(preds.columns) and len(preds) == 32
    for ext in ("png", "svg"):
        assert (smoke_run / "results" / "figures" / f"metric_vs_trainable_params.{ext}").stat().st_size > 1000
    for rule in ("train", "efficiency"):
        assert list((smoke_run / "results" / "logs" / rule).glob("*.log"))
        assert list((smoke_run / "results" / "benchmarks" / rule).glob("*.tsv"))


def test_two_variants_of_one_type_run_side_by_side(smoke_run):
    df = pd.read_csv(smoke_run / "results" / "summary.csv")
    variants = df[df["method_type"] == "lora"]
    assert set(variants["method"]) == {"lora", "lora_r2"}
    adapters = variants.groupby("method")["adapter_params"].first()
    assert adapters["lora_r2"] * 2 == adapters["lora"]  # rank 2 against rank 4: half the adapter
    for dataset in variants.loc[variants["method"] == "lora_r2", "dataset"]:
        a, b = (smoke_run / "results" / "runs" / dataset / m / "seed0" / "model" / "adapter_model.safetensors"
                for m in ("lora", "lora_r2"))
        assert a.read_bytes() != b.read_bytes()
    assert set(df[df["method_type"] != df["method"]]["method"]) == {"lora_r2", "qhira", "vera"}
    by_method = pd.read_csv(smoke_run / "results" / "summary_by_method.csv")
    assert {"lora", "lora_r2"} <= set(by_method["method"])


def _planned_jobs(proc) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run would execute."""
    jobs, rule = [], None
    for line in proc.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line.strip())
        if m:
            rule = m.group(1)
            jobs.append((rule, ""))
        m = re.match(r"^wildcards: (.*)", line.strip())
        if m and jobs:
            jobs[-1] = (rule, m.group(1))
    return jobs


def test_nothing_reruns_and_one_hyperparameter_reruns_only_its_method(smoke_run, tmp_path):
    cfg = smoke_config()
    same = snakemake(smoke_run, write_config(tmp_path / "same.yaml", cfg), "--dry-run", timeout=120)
    assert same.returncode == 0, same.stderr
    assert "Nothing to be done" in same.stdout + same.stderr
    # the same config re-saved with every key sorted (and so in another order) reruns nothing either
    resorted = tmp_path / "sorted.yaml"
    resorted.write_text(yaml.safe_dump(cfg, sort_keys=True))
    assert list(yaml.safe_load(resorted.read_text())["methods"]) != list(cfg["methods"])
    same = snakemake(smoke_run, resorted, "--dry-run", timeout=120)
    assert same.returncode == 0 and "Nothing to be done" in same.stdout + same.stderr, same.stdout[-3000:]

    cfg["methods"]["hira"]["lr"] = cfg["methods"]["hira"]["lr"] * 2
    changed = snakemake(smoke_run, write_config(tmp_path / "changed.yaml", cfg), "--dry-run", timeout=120)
    assert changed.returncode == 0, changed.stderr
    jobs = _planned_jobs(changed)
    trained = [w for r, w in jobs if r == "train"]
    assert trained and all("method=hira" in w for w in trained)
    assert len(trained) == len(cfg["datasets"]) * len(cfg["seeds"])
    assert not any(r in ("fetch_model", "fetch_dataset", "tokenize") for r, _ in jobs)
    # latency, size and FLOPs do not depend on the learning rate
    assert {r for r, _ in jobs} <= {"train", "aggregate", "report", "plot", "explorer", "all"}

    cfg["methods"]["hira"]["r"] = cfg["methods"]["hira"]["r"] * 2  # the rank changes the graph
    reshaped = _planned_jobs(snakemake(smoke_run, write_config(tmp_path / "rank.yaml", cfg), "--dry-run", timeout=120))
    efficiency = [w for r, w in reshaped if r == "efficiency"]
    assert len(efficiency) == len(cfg["datasets"]) and all("method=hira" in w for w in efficiency)

    cfg = smoke_config()
    cfg["methods"]["lora_r2"]["lr"] *= 2  # one variant of a type with two: the other variant stays
    variant = _planned_jobs(snakemake(smoke_run, write_config(tmp_path / "variant.yaml", cfg), "--dry-run",
                                      timeout=120))
    trained = [w for r, w in variant if r == "train"]
    assert len(trained) == len(cfg["methods"]["lora_r2"]["datasets"]) * len(cfg["seeds"])
    assert all("method=lora_r2" in w for w in trained)

    cfg = smoke_config()
    cfg["methods"]["vera"]["datasets"].append("imdb")  # where a variant runs is not how: nothing else reruns
    widened = _planned_jobs(snakemake(smoke_run, write_config(tmp_path / "widened.yaml", cfg), "--dry-run",
                                      timeout=120))
    assert sorted(w for r, w in widened if r in ("train", "efficiency")) == sorted(
        ["dataset=imdb, method=vera", "dataset=imdb, method=vera, seed=0"])

    cfg = smoke_config()
    cfg["evaluation"]["batch_size"] *= 2  # read by the training jobs' evaluation, not by the timing
    rebatched = _planned_jobs(snakemake(smoke_run, write_config(tmp_path / "batch.yaml", cfg), "--dry-run", timeout=120))
    assert any(r == "train" for r, _ in rebatched) and not any(r == "efficiency" for r, _ in rebatched)

    cfg = smoke_config()
    cfg["datasets"]["sst2"]["training"] = {"gradient_checkpointing": True}  # how runs train on one dataset
    one_dataset = _planned_jobs(snakemake(smoke_run, write_config(tmp_path / "ckpt.yaml", cfg), "--dry-run",
                                          timeout=120))
    trained = [w for r, w in one_dataset if r == "train"]
    assert trained and all("dataset=sst2" in w for w in trained)
    assert len(trained) == sum(d == "sst2" for d, _ in run_pairs(cfg)) * len(cfg["seeds"])
    assert not any(r in ("fetch_dataset", "tokenize", "efficiency") for r, _ in one_dataset)

    cfg = smoke_config()
    cfg["methods"]["sparselora"]["by_model"] = {"smollm2": {"warmup_frac": 0.5}}  # one model's settings
    one_model = _planned_jobs(snakemake(smoke_run, write_config(tmp_path / "by_model.yaml", cfg), "--dry-run",
                                        timeout=120))
    trained = sorted(w for r, w in one_model if r == "train")
    assert trained == [f"dataset=wikitext2, method=sparselora, seed={s}" for s in cfg["seeds"]], trained
    assert {r for r, _ in one_model} <= {"train", "aggregate", "report", "plot", "explorer", "all"}


def test_precision_is_part_of_every_run(smoke_run, tmp_path):
    cfg = smoke_config()
    df = pd.read_csv(smoke_run / "results" / "summary.csv")
    assert (df["precision"] == "fp32").all() and (df["precision_requested"] == "fp32").all()
    assert "| precision |" in (smoke_run / "results" / "report.md").read_text()
    cfg["precision"] = "bf16"
    jobs = _planned_jobs(snakemake(smoke_run, write_config(tmp_path / "bf16.yaml", cfg), "--dry-run", timeout=120))
    assert sum(r == "train" for r, _ in jobs) == len(run_pairs(cfg)) * len(cfg["seeds"])
    # one efficiency job per deployed model: what the smoke run measured, no more
    assert sum(r == "efficiency" for r, _ in jobs) == len(list((smoke_run / "results" / "efficiency").rglob("*.json")))
    assert not any(r in ("fetch_model", "fetch_dataset", "tokenize") for r, _ in jobs)


def test_efficiency_columns_are_present_and_sane(smoke_run):
    df = pd.read_csv(smoke_run / "results" / "summary.csv")
    base, df = df[df["method"] == "base"], df[df["method"] != "base"]
    assert (base["train_flops"] == 0).all() and base["train_flops_per_example"].isna().all()
    assert (base["flops_per_example"] > 0).all() and (base["latency_ms"] > 0).all()
    for col in ("latency_ms", "latency_p95_ms", "throughput_per_s", "peak_infer_mem_mb", "adapter_size_mb",
                "model_size_mb", "flops_per_example", "macs_per_example", "train_flops", "train_tokens_per_s"):
        assert (df[col] > 0).all(), col
    assert (df["latency_p95_ms"] >= df["latency_ms"]).all()
    # timed in rounds: an interval around each, the same for every seed of a (dataset, method)
    assert (df["latency_ms_ci95_low"] <= df["latency_ms_ci95_high"]).all()
    assert (df["throughput_per_s_ci95_low"] <= df["throughput_per_s"]).all()
    assert (df.groupby(["dataset", "method"])["latency_ms"].nunique() == 1).all()
    assert (df["flops_per_example"] == 2 * df["macs_per_example"]).all()
    # adapters are small on disk; full fine-tuning ships the whole model
    sizes = df.set_index(["dataset", "method"])["adapter_size_mb"]
    assert (sizes.xs("lora", level="method") < sizes.xs("full_ft", level="method") / 10).all()
    mergeable = df[df["method"].isin(["lora", "hira", "sparse_lora_magnitude"])]
    assert mergeable["latency_merged_ms"].notna().all() and mergeable["merge_error_rel"].isna().all()
    quantized = df[df["method"].isin(["qlora", "qhira"])]  # deployed unmerged, with what merging would lose
    assert quantized["latency_merged_ms"].isna().all() and (quantized["merge_error_rel"] > 0).all()
    # the torch.utils.flop_counter cross-check of one training step stays within 25%
    assert df["train_flops_vs_torch_counter_ratio"].between(0.75, 1.25).all()
    assert (quantized["base_weight_bits"] == 4).all() and (quantized["quantize"] == "nf4").all()
    assert (quantized["flops_counted_as"] == quantized["method"] + ", quantize: none").all()
    assert df[df["method"] == "qlora"]["optimizer"].str.contains("PagedAdamW").all()
    assert (df[df["method"] == "qhira"]["optimizer"] == "torch.optim.AdamW").all()
    assert (df[df["method"] == "lora"]["base_weight_bits"] == 32).all()


def test_variants_that_deploy_lora_share_its_efficiency_measurement(smoke_run):
    """LoRA's pruned variants and SparseLoRA save a LoRA adapter of LoRA's shapes: one efficiency job (LoRA's)
    measures the deployed model for all of them, and their rows say so; other types measure their own."""
    df = pd.read_csv(smoke_run / "results" / "summary.csv")
    shared = ["sparse_lora_l1", "sparse_lora_magnitude", "sparse_lora_structured", "sparselora"]
    files = {p.relative_to(smoke_run / "results" / "efficiency").with_suffix("").as_posix()
             for p in (smoke_run / "results" / "efficiency").rglob("*.json")}
    for dataset, g in df.groupby("dataset"):
        rows = g.set_index("method")
        for method in [m for m in shared if m in rows.index]:
            assert rows.loc[method, "efficiency_measured_on"] == "lora" and f"{dataset}/{method}" not in files
            for col in ("latency_ms", "throughput_per_s", "model_size_mb", "peak_infer_mem_mb", "flops_per_example"):
                assert rows.loc[method, col] == rows.loc["lora", col], (dataset, method, col)
        for method in {"lora", "qlora", "hira", "full_ft", "lora_r2"} & set(rows.index):
            assert rows.loc[method, "efficiency_measured_on"] == method and f"{dataset}/{method}" in files


def test_training_flops_are_counted_from_what_each_run_computed(smoke_run):
    df = pd.read_csv(smoke_run / "results" / "summary.csv").set_index(["dataset", "method"])
    flops = df["train_flops"]
    # the 4-bit matmuls are counted as the matmuls they are: QLoRA computes what LoRA does
    assert ((flops.xs("qlora", level="method") / flops.xs("lora", level="method")).between(0.99, 1.01)).all()
    qhira = flops.xs("qhira", level="method")
    assert ((qhira / flops.xs("hira", level="method").loc[qhira.index]).between(0.99, 1.01)).all()
    # SparseLoRA's sparse steps skip half of the FFN and attention channels in the middle layers (sst2, imdb: 2
    # dense warm-up steps of 3, wikitext2: its one step is the warm-up)
    ratio = flops.xs("sparselora", level="method") / flops.xs("lora", level="method")
    assert (ratio[["sst2", "imdb"]] < 0.98).all() and ratio["wikitext2"] == pytest.approx(1.0)
    sparse = df.xs("sparselora", level="method")
    assert sparse["ffn_sparse_layers"].to_dict() == {"imdb": 4, "sst2": 4, "wikitext2": 28}  # first, last dense
    assert sparse["attn_sparse_layers"].to_dict() == {"imdb": 4, "sst2": 4, "wikitext2": 28}
    assert (smoke_run / "resources/predictors/sst2/minilm/calibrated_rank8.safetensors").is_file()
    report = (smoke_run / "results/report.md").read_text()
    assert "## Contextual sparsity (SparseLoRA) against LoRA" in report and "its attention heads" in report


def test_adaptive_rank_and_a_generic_peft_method_run_from_config(smoke_run):
    df = pd.read_csv(smoke_run / "results" / "summary.csv").set_index(["dataset", "method"])
    ada = df.xs("adalora", level="method")
    assert (ada["adalora_init_r"] == 4).all() and (ada["adalora_rank_max"] <= 4).all()
    # three steps on sst2: the budget shrank toward target_r 2; one step on wikitext2: nothing to score
    assert ada.loc["sst2", "adalora_rank_mean"] < 4 and ada.loc["sst2", "adalora_reallocated"]
    assert ada.loc["wikitext2", "adalora_rank_mean"] == 4 and not ada.loc["wikitext2", "adalora_reallocated"]
    vera = df.xs("vera", level="method")
    assert (vera["method_type"] == "peft").all() and (vera["adapter_params"] > 0).all()
    assert (vera["trainable_params"] < df.xs("lora", level="method").loc[vera.index, "trainable_params"]).all()
    assert (smoke_run / "results" / "figures" / "adalora_ranks.png").stat().st_size > 1000
    assert "figures/adalora_ranks.png" in (smoke_run / "results" / "report.md").read_text()


def test_statistics_report_and_figures(smoke_run):
    from lorabench.analysis.figures import FIGURES

    res = smoke_run / "results"
    by_method = pd.read_csv(res / "summary_by_method.csv")
    assert {"n", "accuracy_mean", "accuracy_std", "accuracy_ci95_low", "accuracy_ci95_high"} <= set(by_method.columns)
    sig = pd.read_csv(res / "significance.csv")
    assert (sig["baseline"] == "lora").all() and "lora" not in set(sig["method"])
    assert {"p_paired_t", "p_mcnemar_exact", "p_paired_t_holm", "p_mcnemar_exact_holm"} <= set(sig.columns)
    assert sig.loc[sig["metric"] == "accuracy", "p_mcnemar_exact"].between(0, 1).all()
    report = (res / "report.md").read_text()
    for heading in ("## Trade-offs against the baseline", "## Which method wins where", "## Significance against lora",
                    "## Discussion", "### What does adapter sparsity cost?", "### What these results do not show"):
        assert heading in report
    # one seed: the sparsity verdicts and the paired comparisons say what is missing instead of guessing
    assert "**sst2**, sparse_lora_magnitude: Not enough data: lora ran one seed, so it has no interval." in report
    assert "qlora, nf4 base with double quantization against lora: accuracy" in report
    assert "(Not enough data: fewer than two shared seeds, no interval, no test)" in report
    # one seed resolves nothing: every comparison is 'unresolved', and the report says so, never "no difference"
    assert set(sig["verdict"]) == {"unresolved"} and {"mde", "seeds_to_resolve", "mde_mcnemar"} <= set(sig.columns)
    assert f"0 differs, 0 equivalent, {len(sig)} unresolved of {len(sig)} comparisons" in report
    assert "unresolved, not 'no difference'" in report and "no difference shown" not in report
    for f in FIGURES:
        for ext in ("png", "svg"):
            assert (res / "figures" / f"{f}.{ext}").stat().st_size > 1000, f
        assert f"figures/{f}.png" in report


def test_time_to_quality_from_the_held_out_curves(smoke_run):
    """Every trained run has its held-out curve (one point per step in the smoke config); the summary's time to
    target is its curve's first point past the target; the report ranks methods and counts the misses."""
    cfg = smoke_config()
    res = smoke_run / "results"
    df = pd.read_csv(res / "summary.csv")
    trained = df[df["method"] != "base"]
    for row in trained.itertuples():
        metrics = json.loads((res / "runs" / row.dataset / row.method / f"seed{row.seed}" / "train_metrics.json").read_text())
        curve, metric = metrics["heldout_curve"], metrics["heldout_metric"]
        assert [p["step"] for p in curve] == list(range(1, row.train_steps + 1)), (row.dataset, row.method)
        assert len(curve) == (1 if row.dataset == "wikitext2" else 3)  # a point per step; WikiText-2 takes one
        assert metrics["heldout_examples"] == cfg["datasets"][row.dataset]["holdout_size"]
        target = cfg["datasets"][row.dataset]["target"]["value"]
        past = [p for p in curve if (p[metric] >= target if metric == "accuracy" else p[metric] <= target)]
        assert bool(row.reached_target) == bool(past)
        if past:
            assert row.steps_to_target == past[0]["step"] and row.time_to_target_s == pytest.approx(past[0]["train_time_s"])
        else:
            assert math.isnan(row.steps_to_target) and math.isnan(row.time_to_target_s)
    assert not trained.loc[trained["dataset"] == "imdb", "reached_target"].any()  # 0.99 in three steps: never
    assert trained.loc[trained["dataset"] == "wikitext2", "reached_target"].all()  # perplexity <= 5000: at once
    report = (res / "report.md").read_text()
    section = report.split("## Time to quality")[1].split("\n## ")[0]
    assert "### imdb: held-out accuracy >= 0.99" in section and "### wikitext2: held-out perplexity <= 5000" in section
    assert "| 0 of 1 |" in section and "Runs that never reached it: " in section and "not reached" in section


def test_snakemake_html_report_builds(smoke_run, tmp_path):
    html = smoke_run / "results" / "report.html"
    proc = snakemake(smoke_run, write_config(tmp_path / "c.yaml", smoke_config()), "--report", str(html), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert html.stat().st_size > 100_000
    assert "explorer.html" in html.read_text()  # the report links the interactive explorer


def test_pipeline_efficiency_accounts_for_the_smoke_run(smoke_run, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import pipeline_efficiency

    assert pipeline_efficiency.main([str(smoke_run / "results")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    m = re.fullmatch(r"train_share=([\d.]+) train_share_excl_curves=([\d.]+) curve_share=([\d.]+) jobs=(\d+) "
                     r"processes=(\d+) startup_load_s_per_process=([\d.]+) wall_s=(\d+)", out[-1])
    assert m, out[-1]
    share, share_excl, curve_share, jobs, processes, startup, _ = m.groups()
    cfg = smoke_config()
    pairs = len(run_pairs(cfg))
    benchmarks = list((smoke_run / "results" / "benchmarks").rglob("*.tsv"))
    assert int(jobs) == len(benchmarks) >= pairs * len(cfg["seeds"]) + pairs
    assert int(processes) == int(jobs) + 2  # Snakemake's own, and the warm process that forked the torch jobs
    table, totals = pipeline_efficiency.breakdown(smoke_run / "results")
    assert totals["warm_jobs"] == totals["torch_jobs"] > 0  # every one of them (warm_process, a local run)
    seconds = table.set_index("where")["seconds"]
    loops = sum(json.loads(p.read_text())["train_time_s"] for p in (smoke_run / "results" / "runs").rglob("train_metrics.json"))
    assert seconds["training loops"] == pytest.approx(loops, rel=1e-6)
    assert float(share) == pytest.approx(loops / totals["wall_s"], abs=1e-3)
    curves = sum(json.loads(p.read_text())["curve_eval_time_s"]
                 for p in (smoke_run / "results" / "runs").rglob("train_metrics.json"))
    assert seconds["held-out curve"] == pytest.approx(curves, rel=1e-6)
    assert float(curve_share) == pytest.approx(curves / loops, abs=1e-3)
    assert float(share_excl) == pytest.approx(loops / (totals["wall_s"] - curves), abs=1e-3)
    assert float(share_excl) > float(share)
    phases = [json.loads(p.read_text())["job_phases_s"] for p in (smoke_run / "results").rglob("*.json")
              if p.parent.parent.name == "efficiency" or p.name == "train_metrics.json"]
    assert float(startup) == pytest.approx(sum(ph["startup"] + ph["load"] for ph in phases) / len(phases), abs=0.05)
    assert set(totals["startup_by_kind"].index) == {"train", "efficiency"}
    for where in ("held-out curve", "evaluation", "efficiency timing", "FLOPs", "start-up and load"):
        assert seconds[where] > 0, where
    assert seconds.sum() == pytest.approx(totals["wall_s"])  # every second of the wall time is placed
    parts = totals["else_parts"]  # "everything else", split: its parts account for all of it
    assert sum(parts.values()) == pytest.approx(seconds["everything else"], abs=0.5)
    assert parts["saving and set-up in torch jobs"] > 0 and parts["jobs without phases"] > 0
    assert parts["between jobs"] >= -1e-6 and parts["jobs in parallel"] <= 1e-6
