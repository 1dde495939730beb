"""Trackers: runs logged offline to TensorBoard, MLflow and W&B, read back with each library's own reader."""

import glob
import json
import math
import os
import random
import signal
import struct
import sys
import time

import pandas as pd
import pytest

from lorabench.config import ConfigError, validate_config
from lorabench.config.schema import load_schema
from lorabench.config.tracking import TRACKERS
from lorabench.execution.jobs import train_run

from conftest import smoke_config
from test_robustness import _checkpoint_step, _comparable, _kwargs, _start

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over every event file of the run's folder, with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_run(results, name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient((results / "mlruns").resolve().as_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"attributes.run_name = '{name}'")
    return client, runs


def wandb_records(path):
    """The protobuf records of a W&B offline run file (a LevelDB log after W&B's 7-byte header), parsed with
    W&B's own message classes: wandb 0.31 ships no Python reader of its offline files."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, pending = open(path, "rb").read(), 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def wandb_history(run_dir) -> tuple[set, list[tuple[int, float]], dict]:
    """(run ids, [(step, train/loss)], summary) over the offline run folders of one tracked run."""
    ids, losses, summary = set(), [], {}
    for path in sorted(glob.glob(f"{run_dir}/wandb/offline-run-*/run-*.wandb")):
        ids.add(path.rsplit("-", 1)[1].removesuffix(".wandb"))
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                if "train/loss" in items:
                    losses.append((record.history.step.num, items["train/loss"]))
            elif kind == "summary":
                summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.summary.update})
    return ids, losses, summary


def test_schema_names_the_trackers_the_code_knows():
    assert load_schema()["properties"]["tracking"]["items"]["enum"] == list(TRACKERS)


def test_a_tracker_that_is_not_installed_is_refused_with_the_install_command(monkeypatch):
    cfg = smoke_config()
    cfg["tracking"] = ["tensorboard", "wandb"]
    validate_config(dict(cfg))  # both installed here: accepted
    monkeypatch.setitem(sys.modules, "wandb", None)  # what importlib reports for a package that is absent
    refused = r"'tracking': wandb named but not installed.*pip install -e '\.\[tracking\]'"
    with pytest.raises(ConfigError, match=refused):
        validate_config(dict(cfg))


def test_a_killed_and_resumed_run_is_one_tracked_run_with_unchanged_metrics(tokenized, tmp_path):
    reference = train_run(**_kwargs(tokenized, tmp_path / "reference"))
    total = reference["train_steps"]
    results = tmp_path / "results"
    out = tmp_path / "killed"
    tracked = {**_kwargs(tokenized, out), "tracking": ["tensorboard", "mlflow", "wandb"], "results_dir": str(results)}
    kill_at = random.Random(os.getpid()).randrange(3, total - 3)
    proc = _start(tracked)
    deadline = time.time() + 120
    while _checkpoint_step(out / "ckpt" / "checkpoint.pt") < kill_at and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "ckpt" / "tracking.json").exists()
    resumed = train_run(**tracked)
    assert resumed["resumed_from_step"] >= kill_at
    assert _comparable(resumed) == _comparable(reference), "tracking changed a metric"

    accuracy = json.loads((out / "eval_metrics.json").read_text())["accuracy"]
    expected = [(p["step"], p["loss"]) for p in reference["loss_curve"]]
    name = "sst2/sparse_lora_magnitude/seed0"
    scalars = tensorboard_scalars(results / "tensorboard" / name)
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, total + 1))  # every step once, in order
    assert all(math.isclose(v, e, rel_tol=1e-6) for (_, v), (_, e) in zip(scalars["train/loss"], expected))
    assert [s for s, _ in scalars["train/lr"]] == list(range(1, total + 1))
    assert math.isclose(scalars["final/accuracy"][0][1], accuracy, rel_tol=1e-6)
    held = [(p["step"], p["accuracy"]) for p in reference["heldout_curve"]]  # the held-out curve, once, in order
    assert len(held) == 6 and [s for s, _ in scalars["heldout/accuracy"]] == [s for s, _ in held]
    assert all(math.isclose(v, e, rel_tol=1e-6) for (_, v), (_, e) in zip(scalars["heldout/accuracy"], held))

    client, runs = mlflow_run(results, name)
    assert len(runs) == 1, "a resumed run must continue its tracked run, not start a second"
    history = sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, "train/loss"))
    assert history == expected
    assert sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, "heldout/accuracy")) == held
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["accuracy"] == accuracy
    assert run.data.params["method_params.lr"] == str(reference["lr"])
    assert run.data.tags["version.torch"] == resumed["versions"]["torch"]

    ids, losses, summary = wandb_history(results / "wandb" / name)
    assert len(ids) == 1 and losses == expected
    assert summary["accuracy"] == accuracy

    # Run again from scratch: the tracked run is replaced, not duplicated.
    (out / "train_metrics.json").unlink()
    train_run(**tracked)
    assert len(mlflow_run(results, name)[1]) == 1
    assert [s for s, _ in tensorboard_scalars(results / "tensorboard" / name)["train/loss"]] == list(
        range(1, total + 1))


@pytest.mark.e2e
def test_the_smoke_runs_tracked_final_metrics_equal_the_summary(smoke_run):
    results = smoke_run / "results"
    summary = pd.read_csv(results / "summary.csv")
    checked = 0
    for row in summary.to_dict("records"):
        name = f"{row['dataset']}/{row['method']}/seed{row['seed']}"
        client, runs = mlflow_run(results, name)
        assert len(runs) == 1, name
        logged = runs[0].data.metrics
        scalars = tensorboard_scalars(results / "tensorboard" / name)
        for column in ("accuracy", "perplexity", "train_time_s", "trainable_params", "train_flops",
                       "peak_train_mem_mb", "cost_usd", "adapter_size_mb"):
            if column in summary.columns and pd.notna(row[column]):
                assert math.isclose(logged[column], row[column], rel_tol=1e-9), (name, column)
                assert math.isclose(scalars[f"final/{column}"][-1][1], row[column], rel_tol=1e-6), (name, column)
                checked += 1
        steps = [s for s, _ in scalars.get("train/loss", [])]
        assert steps == list(range(1, int(row["train_steps"]) + 1)), name
    assert checked >= 4 * len(summary)
