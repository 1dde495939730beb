"""One warm process per local Snakemake run: it imports torch and the libraries once, and each torch job is a child
forked from it, instead of a fresh interpreter that imports them again (about 6 s a job on the project's CPU
machines: docs/measurements/default-run.md, 2026-12-07 (warm process)).

The workflow's main process starts the server before the first job (workflow/rules/common.smk, ``onstart``) and
tells the jobs where it listens (``SOCKET_ENV``). A job's script calls ``call(target, **kwargs)``: without a
server (a cluster job, ``warm_process: false``, a server that is gone) it imports the target and runs it in its
own process, as before. With one, it sends the server the target, the arguments, its working folder, its
environment and its stdout and stderr (the job's log, as file descriptors); the server forks a child that runs
the target there, and the job waits for the child's exit status and exits with it.

What a forked child measures: it starts from the server's state after the imports, as a job of its own does after
its imports; it maps the server's resident library pages back first (runtime/memory.py, resident_file_pages), so
its memory peaks are those of a fresh process (docs/measurements/chaos.md). Its start-up is counted from the job's
own process start (``PhaseClock.started_at``): the interpreter, Snakemake's script preamble, the request, the
fork. The server never runs a torch operation, so no thread pool and no CUDA context exists to be inherited.

Killed or cancelled jobs: a job that dies (SIGKILL included) closes its connection, and the server kills its
child with everything the child started; the server and its children die with the Snakemake process (a parent
death signal) and with its process group, which they stay in. Snakemake's ``benchmark:`` files time the job
(``s``) as before, but their memory and CPU columns then cover the waiting job only, not its child: each run's
memory by phase is in its metrics (summary.csv).

This module imports nothing but the standard library at the top: the Snakefile and the job scripts load it.
"""

from __future__ import annotations

import importlib
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
import traceback

SOCKET_ENV = "LORABENCH_WARM_SOCKET"
#: What the server imports before it forks: every torch job's target and the libraries they import.
PRELOAD = ("lorabench.execution.jobs", "lorabench.execution.seed_chunk", "lorabench.methods.sparselora.predictors",
           "lorabench.loading.data", "lorabench.loading.models", "lorabench.execution.flops",
           "lorabench.execution.inference")
_LENGTH = struct.Struct("!Q")
_STATUS = struct.Struct("!i")
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent (pid ``parent``) exits (Linux prctl), and exit now if it already
    has."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _run_here(target: str, kwargs: dict):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def _plain(value):
    """Snakemake's containers and str subclasses as builtins, so that the server can unpickle them without
    importing Snakemake."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def call(target: str, **kwargs):
    """Run ``target`` ("module:function") with ``kwargs``: in a child of the warm server where one listens, else
    here. A child that fails makes this job exit with its status (its traceback is in the job's log)."""
    path = os.environ.get(SOCKET_ENV)
    if path:
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(_address(path))
        except OSError as error:
            print(f"lorabench: no warm process at {path} ({error}); running this job in its own process",
                  file=sys.stderr, flush=True)
        else:
            with conn:
                request = pickle.dumps({"target": target, "kwargs": _plain(kwargs), "cwd": os.getcwd(),
                                        "environ": dict(os.environ), "pid": os.getpid()})
                sys.stdout.flush()
                sys.stderr.flush()
                socket.send_fds(conn, [_LENGTH.pack(len(request))], [1, 2])
                conn.sendall(request)
                status = _recv_exactly(conn, _STATUS.size)
            if status is not None:
                code = _STATUS.unpack(status)[0]
                if code:
                    raise SystemExit(f"lorabench: {target} failed in the warm process's child (exit status {code}); "
                                     "its error is above")
                return None
            print("lorabench: the warm process ended before this job did; running it in its own process",
                  file=sys.stderr, flush=True)
    return _run_here(target, kwargs)


def _recv_exactly(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _child(request: dict, fds: list[int], started_at: float, pages: list) -> int:
    """In the forked child: the job's stdout, stderr, folder and environment, then its target; the exit status."""
    from lorabench.execution.jobs import PhaseClock
    from lorabench.runtime.memory import refault_file_pages

    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["environ"])
    import tempfile

    tempfile.tempdir = None  # the imports cached the server's; the job's TMPDIR (Snakemake's resources) holds
    _limit_threads(os.environ.get("OMP_NUM_THREADS", ""))
    refault_file_pages(pages)
    PhaseClock.started_at = started_at  # the job's own start: its interpreter and request count as start-up
    PhaseClock.warm = True
    try:
        _run_here(request["target"], request["kwargs"])
        return 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001  (every failure must reach the job's log and its exit status)
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _limit_threads(threads: str) -> None:
    """The job's thread count (Snakemake sets OMP_NUM_THREADS and the BLAS libraries' variables to its
    ``threads``): a fresh process's libraries read it when they load, but the server loaded them under its own
    environment, so the child sets it on what is loaded (torch's pool, OpenMP and BLAS: threadpoolctl)."""
    if not threads.isdigit() or int(threads) < 1:
        return
    from threadpoolctl import threadpool_limits

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    threadpool_limits(limits=int(threads))


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def serve(listener: socket.socket, parent: int, preload=PRELOAD) -> None:
    """Import ``preload`` and the libraries, then fork a child per request on ``listener`` until killed or until
    ``parent`` (the pid of the process that started it) exits. Single-threaded, so that each fork copies a
    process no other thread holds a lock in."""
    import psutil

    from lorabench.runtime.clock import process_started_at

    _die_with_parent(parent)
    for module in preload:
        importlib.import_module(module)
    if preload:
        from lorabench.runtime.memory import import_libraries, resident_file_pages

        import_libraries()
        pages = resident_file_pages()
    else:
        pages = []
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    server = os.getpid()
    children: dict[int, socket.socket] = {}  # child pid -> its job's connection
    while True:
        for key, _ in selector.select(timeout=0.1):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                conn.settimeout(30)
                try:
                    head, fds, _, _ = socket.recv_fds(conn, _LENGTH.size, 2)
                    request = pickle.loads(_recv_exactly(conn, _LENGTH.unpack(head)[0]))
                    started_at = process_started_at(int(request["pid"]))
                except (OSError, EOFError, pickle.UnpicklingError, struct.error, TypeError, ValueError, KeyError,
                        psutil.Error):
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    _die_with_parent(server)
                    selector.close()
                    listener.close()
                    for other in children.values():
                        other.close()
                    conn.close()
                    os._exit(_child(request, fds, started_at, pages))
                for fd in fds:
                    os.close(fd)
                children[pid] = conn
                selector.register(conn, selectors.EVENT_READ, pid)
            else:  # a job's connection readable: the job is gone (it sends nothing more)
                selector.unregister(key.fileobj)
                _kill_tree(key.data)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    selector.unregister(conn)
                except KeyError:  # already, when its job went away first
                    pass
                try:
                    conn.sendall(_STATUS.pack(os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
                conn.close()


def _address(name: str) -> str:
    """``name`` as a socket address: "@..." is Linux's abstract namespace (no file to clean up, no path-length
    limit from a deep working folder); an environment variable cannot hold its leading NUL."""
    return "\0" + name[1:] if name.startswith("@") else name


def start(log: str, preload: bool = True):
    """Start the server for this run from the workflow's main process, in its process group, and set
    ``SOCKET_ENV`` for the jobs it starts; the server's own messages go to ``log``. Returns its Popen.

    The socket listens before this returns (the server inherits it), so a job that starts at once queues instead
    of missing it; this process closes its copy, so that a job finds no listener once the server is gone."""
    import subprocess

    name = f"@lorabench-warm-{os.getpid()}-{os.urandom(4).hex()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(_address(name))
    listener.listen(64)
    os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
    with open(log, "w") as out, listener:
        command = [sys.executable, "-m", "lorabench.execution.warm", str(listener.fileno()), str(os.getpid()),
                   *([] if preload else ["--bare"])]
        server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  pass_fds=[listener.fileno()])
    os.environ[SOCKET_ENV] = name
    return server


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])), parent=int(sys.argv[2]),
          preload=() if "--bare" in sys.argv[3:] else PRELOAD)
