"""Targets the warm process's tests run in its children (tests/test_warm.py)."""

import os
import time
from pathlib import Path


def report(path, message):
    print(message, flush=True)
    Path(path).write_text(f"{os.getpid()} {os.getppid()} {os.getcwd()} {os.environ.get('WARM_TEST_VALUE', '')}")


def fail():
    raise ValueError("a failure in the child")


def hang(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)


def threads(path):
    import torch
    from threadpoolctl import threadpool_info

    counts = {torch.get_num_threads(), *(pool["num_threads"] for pool in threadpool_info())}
    Path(path).write_text(" ".join(map(str, sorted(counts))))
