"""A real Snakemake run, SIGKILLed with every process it started at random moments and restarted with
--rerun-incomplete, ends as an uninterrupted run does (benchmarks/chaos.py, which runs it at any size): with one
job per seed, and with two seeds per process (seeds_per_job), where a kill between them loses only the second."""

from __future__ import annotations

import pytest

from conftest import REPO, SNAPSHOTS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def chaos_module():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import chaos

    return chaos


@pytest.fixture(scope="module")
def one_job_per_seed(chaos_module, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("chaos_per_seed")
    found = chaos_module.chaos(workdir, kills=5, seed=1, cores=2,
                               config=chaos_module.chaos_config(snapshots=SNAPSHOTS), timeout=1800)
    return workdir, found


def _nothing_lost(found):
    assert found["kills"] >= 5
    assert found["jobs_started"] > found["uninterrupted_jobs"], "no kill interrupted a job"
    assert found["detector_sees_reruns"], "the rerun detector misreads Snakemake's logs"
    assert found["reruns"] == [], "jobs that had completed ran again"
    assert found["differences"] == [], "the summary differs from the uninterrupted run's"
    assert found["leftovers"] == [], "partial outputs or temporary files were left"


def test_a_run_killed_at_random_moments_loses_nothing(one_job_per_seed):
    _nothing_lost(one_job_per_seed[1])


def test_seeds_grouped_in_one_process_lose_only_the_unfinished_seed(chaos_module, one_job_per_seed, tmp_path):
    found = chaos_module.chaos(tmp_path, kills=5, seed=2, cores=2,
                               config=chaos_module.chaos_config(snapshots=SNAPSHOTS, seeds_per_job=2), timeout=1800)
    _nothing_lost(found)
    assert found["seeds_finished_before_a_kill"] > 0, "no kill came after a finished seed: nothing was tested"
    assert found["seeds_retrained"] == [], "a seed that had finished was trained again"
    # Each seed's results are those of a job of its own: the uninterrupted runs agree, timings and memory aside.
    per_seed = one_job_per_seed[0] / "reference" / "results" / "summary.csv"
    assert chaos_module.summary_differences(per_seed, tmp_path / "reference" / "results" / "summary.csv") == []
