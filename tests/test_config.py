import copy
import re

import pytest

from lorabench.config import ConfigError
from lorabench.methods.checks import check_config

from conftest import REPO, SNAPSHOTS, load_yaml, smoke_config, snakemake, write_config


@pytest.mark.parametrize("name", ["config.yaml", "configs/smoke.yaml", "configs/paper.yaml", "configs/sweeps.yaml",
                                  "configs/lr-sweep.yaml"])
def test_shipped_configs_are_valid(name, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = load_yaml(REPO / name)
    if cfg["snapshots"]:
        cfg["snapshots"] = str(SNAPSHOTS)
    check_config(cfg)


def _set(cfg, path, value):
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()

# (what is wrong, key to change, new value, words the error must contain)
BAD_CONFIGS = [
    ("a learning-rate sweep without a held-out slice", [("lr_grid", {"lora": [1e-3, 3e-3]}),
                                                         ("datasets.imdb.holdout_size", None)], None,
     ["datasets.imdb.holdout_size", "never on the eval split"]),
    ("a learning-rate sweep scored on the eval split", [("lr_grid", {"lora": [1e-3, 3e-3]}),
                                                        ("datasets.sst2.scored_on", "eval_split")], None,
     ["datasets.sst2.scored_on", "never on the eval split", "holdout"]),
    ("a target without a held-out slice", "datasets.sst2.holdout_size", None,
     ["datasets.sst2.target", "datasets.sst2.holdout_size", "held-out curve"]),
    ("a target with the held-out curve off", "evaluation.curve_points", 0,
     ["datasets.sst2.target", "curve_points"]),
    ("more curve points than optimizer steps", "evaluation.curve_points", 4,
     ["evaluation.curve_points", "4 curve points", "only 3 optimizer steps", "at most 3"]),
    ("a dataset's curve points past its steps", "datasets.imdb.curve_points", 5,
     ["datasets.imdb.curve_points", "at most 3"]),
    ("scored on a holdout that is not there", [("datasets.imdb.scored_on", "holdout"),
                                                ("datasets.imdb.holdout_size", None)], None,
     ["datasets.imdb.scored_on", "datasets.imdb.holdout_size"]),
    ("a target of no value", "datasets.wikitext2.target", {"value": 0}, ["datasets.wikitext2.target.value"]),
    ("a learning-rate sweep of an unknown entry", "lr_grid", {"lroa": [1e-3]}, ["lr_grid.lroa", "lora"]),
    ("a negative rate in a learning-rate sweep", "lr_grid", {"lora": [-1e-3]}, ["lr_grid.lora.0"]),
    ("mean pooling on a model without a pooler", "models.smollm2.pooling", "mean",
     ["models.smollm2.pooling", "llama", "cls"]),
    ("pooling that does not exist", "models.minilm.pooling", "max", ["models.minilm.pooling", "max"]),
    ("a variant restricted to an unknown dataset", "methods.base", {"datasets": ["mnli"]},
     ["methods.base.datasets", "mnli", "sst2"]),
    ("the untrained base given a learning rate", "methods.base", {"lr": 1e-3}, ["methods.base", "lr"]),
    ("unknown method", "methods.lroa", {"lr": 1e-3}, ["methods", "lroa"]),
    ("unknown dataset", "datasets.mnli", {"repo": "x"}, ["datasets", "mnli", "sst2"]),
    ("negative learning rate", "methods.lora.lr", -1e-4, ["methods.lora.lr", "-0.0001"]),
    ("zero learning rate", "methods.full_ft.lr", 0, ["methods.full_ft.lr"]),
    ("seeds not a list", "seeds", 3, ["seeds", "array"]),
    ("seeds not ints", "seeds", [0, "one"], ["seeds.1", "integer"]),
    ("zero batch size", "training.batch_size", 0, ["training.batch_size", "minimum"]),
    ("negative train size", "datasets.sst2.train_size", -5, ["datasets.sst2.train_size"]),
    ("epochs as text", "training.epochs", "two", ["training.epochs", "integer"]),
    ("sparsity of 1", "methods.sparse_lora_magnitude.sparsity", 1.0, ["methods.sparse_lora_magnitude.sparsity"]),
    ("sparsity below 0", "methods.sparse_lora_structured.sparsity", -0.1, ["sparse_lora_structured.sparsity"]),
    ("rank larger than the layer", "methods.lora.r", 512, ["methods.lora.r", "384"]),
    ("dataset names a missing model", "datasets.sst2.model", "bert9", ["datasets.sst2.model", "bert9"]),
    ("stride longer than the window", "datasets.wikitext2.stride", 64, ["datasets.wikitext2.stride"]),
    ("prune schedule reversed", "methods.sparse_lora_magnitude.prune_start_frac", 0.9, ["prune_start_frac"]),
    ("unknown top-level key", "learning_rate", 0.1, ["learning_rate"]),
    ("missing required key", "training.epochs", _DELETE, ["epochs"]),
    ("snapshot folder missing", "snapshots", "/nonexistent/hf", ["snapshots", "/nonexistent/hf"]),
    ("repo missing from snapshots", "models.minilm.repo", "org/not-there", ["models.minilm.repo", "org/not-there"]),
    ("unknown task", "datasets.imdb.task", "regression", ["datasets.imdb.task"]),
    ("SparseLoRA sparsity of 1", "methods.sparselora.ffn_sparsity", 1.0, ["methods.sparselora.ffn_sparsity"]),
    ("SparseLoRA negative sparsity in a list", "methods.sparselora.ffn_sparsity", [0.5] * 5 + [-0.1],
     ["methods.sparselora.ffn_sparsity"]),
    ("SparseLoRA dense layer outside the model", "methods.sparselora.dense_layers", [0, 6],
     ["methods.sparselora.dense_layers", "index 6", "6 layers", "minilm"]),
    ("SparseLoRA per-layer list of the wrong length", "methods.sparselora.ffn_sparsity", [0.5, 0.5],
     ["methods.sparselora.ffn_sparsity", "2 values", "6 layers"]),
    ("SparseLoRA predictor rank above the layer width", "methods.sparselora.predictor_rank", 500,
     ["methods.sparselora.predictor_rank", "384"]),
    ("SparseLoRA attention sparsity of 1", "methods.sparselora.attn_sparsity", 1.0,
     ["methods.sparselora.attn_sparsity"]),
    ("SparseLoRA attention per-layer list of the wrong length", "methods.sparselora.by_model",
     {"smollm2": {"attn_sparsity": [0.5] * 6}}, ["methods.sparselora.by_model.smollm2.attn_sparsity", "6 values",
                                               "30 layers"]),
    ("variant of an unknown type", "methods.my_lora", {"type": "lorra", "lr": 1e-3},
     ["methods.my_lora.type", "lorra", "registered"]),
    ("variant with a setting its type lacks", "methods.my_lora",
     {"type": "lora", "lr": 1e-3, "r": 2, "alpha": 4, "dropout": 0.0, "sparsity": 0.5},
     ["methods.my_lora", "sparsity", "settings of type 'lora'", "alpha"]),
    ("variant with a bad value", "methods.prune_90",
     {"type": "sparse_lora_magnitude", "lr": 1e-3, "r": 2, "alpha": 4, "dropout": 0.0, "sparsity": 1.5},
     ["methods.prune_90.sparsity", "1.5"]),
    ("variant key with a slash", "methods.lora/x", {"type": "lora", "lr": 1e-3, "r": 2, "alpha": 4, "dropout": 0.0},
     ["methods", "lora/x"]),
    ("DoRA on SparseLoRA (its narrowed FFN is plain LoRA's)", "methods.sparselora.use_dora", True,
     ["methods.sparselora", "use_dora", "settings of type 'sparselora'"]),
    ("per-model settings of an unknown model", "methods.sparselora.by_model", {"gpt": {"ffn_sparsity": 0.5}},
     ["methods.sparselora.by_model.gpt", "minilm", "smollm2"]),
    ("per-model dense layer outside that model", "methods.sparselora.by_model", {"minilm": {"dense_layers": [6]}},
     ["methods.sparselora.by_model.minilm.dense_layers", "index 6", "6 layers"]),
    ("per-model sparsity of 1", "methods.sparselora.by_model", {"smollm2": {"ffn_sparsity": 1.0}},
     ["methods.sparselora.by_model.smollm2.ffn_sparsity"]),
    ("per-model setting the type lacks", "methods.sparselora.by_model", {"minilm": {"use_dora": True}},
     ["methods.sparselora.by_model.minilm", "use_dora", "settings of type 'sparselora'"]),
    ("per-model change of what the entry is", "methods.lora.by_model", {"minilm": {"type": "hira"}},
     ["methods.lora.by_model.minilm.type", "not per model"]),
    ("per-model rank above a layer's width", "methods.lora.by_model", {"minilm": {"r": 5000}},
     ["methods.lora.by_model.minilm.r"]),
    ("SparseLoRA unknown predictor", "methods.sparselora.predictor", "pca", ["methods.sparselora.predictor"]),
    ("unknown bit width", "methods.lora.quantize", "int4", ["methods.lora.quantize", "int4", "nf4"]),
    ("a quantized base under SparseLoRA", "methods.sparselora.quantize", "nf4",
     ["methods.sparselora", "quantize", "full-precision base"]),
    ("a quantized base under full fine-tuning", "methods.full_ft.quantize", "nf4",
     ["methods.full_ft", "quantize", "settings of type 'full_ft'"]),
    ("double quantization without quantization", "methods.lora.double_quant", True,
     ["methods.lora.double_quant", "'none'", "nf4"]),
    ("a 4-bit compute dtype on an 8-bit base", "methods.my_int8",
     {"type": "lora", "lr": 1e-3, "r": 2, "alpha": 4, "dropout": 0.0, "quantize": "int8", "compute_dtype": "float32"},
     ["methods.my_int8.compute_dtype", "'int8'"]),
    ("a dataset's training override with a bad value", "datasets.sst2.training", {"batch_size": 0},
     ["datasets.sst2.training.batch_size", "0"]),
    ("a dataset's training override of a global setting", "datasets.sst2.training", {"subset_seed": 3},
     ["datasets.sst2.training", "subset_seed", "gradient_checkpointing"]),
    ("unknown optimizer", "methods.lora.optimizer", "sgd", ["methods.lora.optimizer", "paged_adamw"]),
    ("AdaLoRA target rank above its initial rank", "methods.ada",
     {"type": "adalora", "lr": 1e-3, "alpha": 8, "dropout": 0.0, "init_r": 4, "target_r": 8},
     ["methods.ada.target_r", "init_r 4"]),
    ("AdaLoRA initial rank above the layer width", "methods.ada",
     {"type": "adalora", "lr": 1e-3, "alpha": 8, "dropout": 0.0, "init_r": 500, "target_r": 8},
     ["methods.ada.init_r", "384"]),
    ("a PEFT config field PEFT does not know", "methods.vera",
     {"type": "peft", "lr": 1e-3, "peft_config": {"peft_type": "VERA", "rank": 8}},
     ["methods.vera.peft_config", "VeraConfig", "'rank'"]),
    ("a PEFT method that does not exist", "methods.vera",
     {"type": "peft", "lr": 1e-3, "peft_config": {"peft_type": "VERAA"}}, ["methods.vera.peft_config", "VERAA", "LOHA"]),
    ("a PEFT config without its type", "methods.vera", {"type": "peft", "lr": 1e-3, "peft_config": {"r": 8}},
     ["methods.vera.peft_config", "peft_type"]),
    ("a zero equivalence margin", "evaluation.equivalence_margin", {"accuracy": 0},
     ["evaluation.equivalence_margin.accuracy", "0"]),
    ("a negative equivalence margin", "evaluation.equivalence_margin", {"perplexity": -1.0},
     ["evaluation.equivalence_margin.perplexity", "-1"]),
    ("an unknown tracker", "tracking", ["neptune"], ["tracking", "neptune", "tensorboard"]),
    ("no seed per job", "seeds_per_job", 0, ["seeds_per_job", "0"]),
]


@pytest.mark.parametrize("what,key,value,words", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_refused_with_the_key_named(what, key, value, words):
    cfg = copy.deepcopy(smoke_config())
    for k, v in key if isinstance(key, list) else [(key, value)]:
        _set(cfg, k, v)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    for w in words:
        assert w in str(err.value), f"{what}: '{w}' not in: {err.value}"


def test_offline_without_snapshots_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = smoke_config()
    cfg["snapshots"] = ""
    with pytest.raises(ConfigError, match="snapshots=PATH"):
        check_config(cfg)


@pytest.mark.parametrize("key,value,words", [
    ("methods.lroa", {"lr": 1e-3}, "methods"),
    ("methods.lora.lr", -1.0, "methods.lora.lr"),
    ("seeds", "0,1", "seeds"),
])
def test_snakemake_refuses_bad_config_before_any_job(tmp_path, key, value, words):
    cfg = smoke_config()
    _set(cfg, key, value)
    proc = snakemake(tmp_path, write_config(tmp_path / "bad.yaml", cfg), "--dry-run", timeout=120)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "invalid configuration" in out and words in out
    assert "Traceback" not in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_sparselora_on_an_architecture_without_a_channel_map_is_refused(tmp_path):
    """A snapshot whose model has no FFN channel map (here GPT-2) is refused before any job, naming the key."""
    import json
    import os

    snapshots = tmp_path / "hf"
    for kind in ("models", "datasets"):
        for org in (SNAPSHOTS / kind).iterdir():
            (snapshots / kind).mkdir(parents=True, exist_ok=True)
            os.symlink(org, snapshots / kind / org.name)
    gpt2 = snapshots / "models" / "openai-community" / "gpt2"
    gpt2.mkdir(parents=True)
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 64}))
    cfg = copy.deepcopy(smoke_config())
    cfg["snapshots"] = str(snapshots)
    cfg["models"]["gpt2"] = {"repo": "openai-community/gpt2", "target_modules": ["c_attn"]}
    cfg["datasets"]["sst2"]["model"] = "gpt2"
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert "methods.sparselora" in str(err.value) and "gpt2" in str(err.value) and "llama" in str(err.value)


def test_quantize_is_one_axis_and_qlora_is_its_preset():
    cfg = copy.deepcopy(smoke_config())
    cfg["methods"]["lora_nf4"] = {"type": "lora", "lr": 1e-3, "r": 4, "alpha": 8, "dropout": 0.0, "quantize": "nf4",
                                  "double_quant": True, "optimizer": "paged_adamw"}
    cfg["methods"]["qlora_int8"] = {"type": "qlora", "lr": 1e-3, "r": 4, "alpha": 8, "dropout": 0.0, "quantize": "int8"}
    cfg["methods"]["qhira"] = {"type": "hira", "lr": 5e-3, "r": 4, "dropout": 0.0, "quantize": "fp4"}
    methods = check_config(cfg)["methods"]
    preset = {k: v for k, v in methods["qlora"].items() if k != "type"}
    assert preset == {k: v for k, v in methods["lora_nf4"].items() if k not in ("type", "use_dora", "use_rslora")}
    assert (preset["quantize"], preset["double_quant"], preset["optimizer"]) == ("nf4", True, "paged_adamw")
    assert methods["lora"]["quantize"] == "none" and methods["lora"]["optimizer"] == "adamw"
    assert methods["qlora_int8"]["quantize"] == "int8"  # the preset's double_quant is not held against int8
    assert methods["qhira"]["quantize"] == "fp4"


def test_sweeps_plan_the_brief_s_curves(tmp_path):
    """configs/sweeps.yaml plans at least 30 training jobs over the three axes (a dry run: nothing trains)."""
    cfg = load_yaml(REPO / "configs/sweeps.yaml")
    cfg["snapshots"] = str(SNAPSHOTS)
    proc = snakemake(tmp_path, write_config(tmp_path / "sweeps.yaml", cfg), "-n", "--quiet", "rules", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_jobs = int(re.search(r"^train\s+(\d+)", proc.stdout + proc.stderr, re.M).group(1))
    assert train_jobs >= 30
    methods = check_config(cfg)["methods"]
    sparsities = {p["sparsity"] for p in methods.values() if p["type"] == "sparse_lora_magnitude"}
    assert sparsities == {0.25, 0.5, 0.75, 0.9}
    assert {p["r"] for p in methods.values() if p["type"] == "hira"} == {2, 4, 8, 16, 32}
    assert {p["r"] for p in methods.values() if p["type"] == "lora" and p["quantize"] == "none"} == {2, 4, 8, 16, 32}
    assert {p.get("quantize", "none") for p in methods.values()} == {"none", "int8", "nf4", "fp4"}
    assert {p["ffn_sparsity"] for p in methods.values() if p["type"] == "sparselora"} == {0.5, 0.75, 0.9}


def test_lr_sweep_plans_each_rate_as_a_variant_scored_on_held_out_data(tmp_path):
    """configs/lr-sweep.yaml: every rate of every swept method a variant with the entry's other settings, every
    dataset scored on a held-out slice of its train split, and the choice table planned (a dry run)."""
    cfg = load_yaml(REPO / "configs/lr-sweep.yaml")
    cfg["snapshots"] = str(SNAPSHOTS)
    proc = snakemake(tmp_path, write_config(tmp_path / "lr.yaml", cfg), "-n", "--quiet", "rules", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    grid = cfg["lr_grid"]
    runs = sum(len(r) for r in grid.values()) * len(cfg["datasets"]) * len(cfg["seeds"])
    assert int(re.search(r"^train\s+(\d+)", out, re.M).group(1)) == runs
    assert re.search(r"^lr_choice\s+1", out, re.M)
    # the rates of one method build the same model: one efficiency job measures it for all of them
    assert int(re.search(r"^efficiency\s+(\d+)", out, re.M).group(1)) == len(grid) * len(cfg["datasets"])
    methods = check_config(copy.deepcopy(cfg))["methods"]
    assert methods["lora_lr3e-4"] == {**methods["lora_lr1e-3"], "lr": 3e-4}
    assert {p["lr"] for n, p in methods.items() if p["type"] == "full_ft"} == set(grid["full_ft"])
    assert all(ds["holdout_size"] for ds in cfg["datasets"].values())
    checked = check_config(copy.deepcopy(cfg))
    assert {ds["scored_on"] for ds in checked["datasets"].values()} == {"holdout"}  # a sweep never sees eval splits
    assert {ds["scored_on"] for ds in check_config(smoke_config())["datasets"].values()} == {"eval_split"}
