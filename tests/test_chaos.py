"""A real Snakemake run, SIGKILLed with every process it started at random moments and restarted with
--rerun-incomplete, ends as an uninterrupted run does (benchmarks/chaos.py, which runs it at any size)."""

from __future__ import annotations

import pytest

from conftest import REPO, SNAPSHOTS

pytestmark = pytest.mark.e2e


def test_a_run_killed_at_random_moments_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import chaos

    found = chaos.chaos(tmp_path, kills=5, seed=1, cores=2, config=chaos.chaos_config(snapshots=SNAPSHOTS),
                        timeout=1800)
    assert found["kills"] >= 5
    assert found["jobs_started"] > found["uninterrupted_jobs"], "no kill interrupted a job"
    assert found["detector_sees_reruns"], "the rerun detector misreads Snakemake's logs"
    assert found["reruns"] == [], "jobs that had completed ran again"
    assert found["differences"] == [], "the summary differs from the uninterrupted run's"
    assert found["leftovers"] == [], "partial outputs or temporary files were left"
