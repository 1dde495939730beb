"""The warm process (lorabench.execution.warm): a job forked from it runs where its Snakemake job would have run
(folder, environment, log), fails the job when it fails, dies when its job is killed, and a job without a
server runs in its own process. With small targets (tests/warm_targets.py) and nothing preloaded; the smoke run
(tests/test_workflow.py) forks every torch job from a real one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO

TESTS = Path(__file__).resolve().parent


def _client(target: str, log: Path, env: dict, cwd: Path, **kwargs) -> subprocess.Popen:
    """A job's process: ``warm.call(target, **kwargs)`` with its stdout and stderr going to ``log``."""
    code = f"from lorabench.execution.warm import call; call({target!r}, **{kwargs!r})"
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


@pytest.fixture()
def start_server(tmp_path, monkeypatch):
    """Starts a server whose children can import tests/warm_targets.py (``preload``: the real imports, else
    none); returns its Popen. Killed at the test's end."""
    from lorabench.execution.warm import SOCKET_ENV, start

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO / "src")]))
    monkeypatch.delenv(SOCKET_ENV, raising=False)
    started = []

    def _start(preload: bool):
        started.append(start(str(tmp_path / "warm.log"), preload=preload))
        return started[-1]

    yield _start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture()
def server(start_server):
    """A bare server (nothing preloaded): (its Popen, the jobs' environment)."""
    return start_server(False), dict(os.environ)


def _wait_for(path: Path, seconds: float = 60) -> str:
    end = time.monotonic() + seconds
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def test_a_job_runs_in_a_child_of_the_server_with_its_own_folder_environment_and_log(server, tmp_path):
    proc, env = server
    work = tmp_path / "job"
    work.mkdir()
    client = _client("warm_targets:report", tmp_path / "job.log", {**env, "WARM_TEST_VALUE": "from the job"}, work,
                     path=str(tmp_path / "out.txt"), message="written by the child")
    assert client.wait(timeout=60) == 0, (tmp_path / "job.log").read_text()
    pid, ppid, cwd, value = (tmp_path / "out.txt").read_text().split(" ", 3)
    assert int(ppid) == proc.pid and int(pid) not in (proc.pid, client.pid)
    assert cwd == str(work) and value == "from the job"
    assert "written by the child" in (tmp_path / "job.log").read_text()


def test_a_failing_child_fails_its_job_with_the_traceback_in_the_job_s_log(server, tmp_path):
    _, env = server
    client = _client("warm_targets:fail", tmp_path / "job.log", env, tmp_path)
    assert client.wait(timeout=60) != 0
    log = (tmp_path / "job.log").read_text()
    assert "ValueError: a failure in the child" in log and "failed in the warm process's child" in log


def test_a_killed_job_takes_its_child_with_it(server, tmp_path):
    _, env = server
    client = _client("warm_targets:hang", tmp_path / "job.log", env, tmp_path, path=str(tmp_path / "pid"))
    child = int(_wait_for(tmp_path / "pid"))
    assert psutil.pid_exists(child) and child != client.pid
    client.send_signal(signal.SIGKILL)
    client.wait()
    end = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < end, "the child outlived its killed job"
        time.sleep(0.05)


def test_the_server_dies_with_the_process_that_started_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    code = ("import psutil; from lorabench.execution.warm import start; start('w.log');"
            "print(psutil.Process().children()[0].pid)")
    parent = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, timeout=60, capture_output=True,
                            text=True)
    assert parent.returncode == 0, parent.stderr
    server = int(parent.stdout.split()[-1])
    end = time.monotonic() + 10
    while psutil.pid_exists(server) and psutil.Process(server).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < end, "the warm process outlived the Snakemake process that started it"
        time.sleep(0.05)


def test_a_child_of_the_real_server_computes_with_its_job_s_threads(start_server, tmp_path, monkeypatch):
    """The server imported torch and BLAS under its own environment; a job's OMP_NUM_THREADS (Snakemake's
    ``threads``) must hold in its child as in a fresh process."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    start_server(True)  # preloads torch, transformers, PEFT, the package
    client = _client("warm_targets:threads", tmp_path / "job.log", {**os.environ, "OMP_NUM_THREADS": "1"},
                     tmp_path, path=str(tmp_path / "threads"))
    assert client.wait(timeout=300) == 0, (tmp_path / "job.log").read_text()
    assert (tmp_path / "threads").read_text() == "1"


def test_without_a_server_the_job_runs_in_its_own_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO / "src")]),
           "LORABENCH_WARM_SOCKET": f"@lorabench-warm-nobody-{os.urandom(4).hex()}"}
    client = _client("warm_targets:report", tmp_path / "job.log", env, tmp_path, path=str(tmp_path / "out.txt"),
                     message="in its own process")
    assert client.wait(timeout=60) == 0
    pid = int((tmp_path / "out.txt").read_text().split()[0])
    assert pid == client.pid
    assert "no warm process" in (tmp_path / "job.log").read_text()


def test_a_process_s_start_is_read_on_the_wall_clock_within_a_tick(tmp_path):
    """Start-up = time.time() - the process's start (runtime/clock.py): the start must fall between the moments
    just before and just after the process was started (psutil's create_time can be a second early)."""
    before = time.time()
    proc = subprocess.run([sys.executable, "-c", "from lorabench.runtime.clock import process_started_at as s;"
                           "import os; print(s(), s(os.getpid()))"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    after = time.time()
    own, by_pid = map(float, proc.stdout.split())
    assert before - 0.02 <= own <= after and abs(by_pid - own) <= 0.02, (before, own, by_pid, after)
