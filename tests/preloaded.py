"""The entry points run from an interpreter that has already imported what they import.

About half of a short end-to-end run of `src/train.py` is its imports (MLflow, scikit-learn with
the scipy.stats it loads, Hydra: about 2 CPU seconds of 4), the same in every run. `run_script`
runs `python SCRIPT ARGS...` as a child forked from a server process that made those imports once
(`import train, report`, which stops before their `__main__` blocks): the child runs the script as
`__main__` (runpy, as the interpreter does), with the test's argv, working folder, environment,
stdin/stdout/stderr, then the interpreter's own exit (non-daemon threads joined, atexit handlers,
flushed output). What it cannot share is what a library reads from the environment at import: BLAS's
thread count, for one. So there is a server for each value of those variables.

The standard library's `multiprocessing` forkserver preloads modules too, but it has one server per
process with the environment of its start, runs no atexit handlers in its children (MLflow ends an
active run in one) and hands out no standard streams; hence this small server.

The tests that are about a process itself (its signals, its start-up, killing it) start a fresh
interpreter with `subprocess` instead.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Read by a library when it loads, not when it runs: runs that differ in these need servers of their own.
READ_AT_IMPORT = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED",
                  "PYTHONUNBUFFERED", "PYTHONPATH", "MPLBACKEND")
_servers: dict[tuple, tuple[subprocess.Popen, Path]] = {}
_lock = threading.Lock()


# ----------------------------------------------------------------------------- the test's side

def run_script(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """As `subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)`, where
    `args` is [sys.executable, script, *arguments], run in a child of a preloaded interpreter."""
    address = _server(env)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    request = json.dumps({"argv": list(args[1:]), "cwd": str(cwd), "env": env}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(address))
        socket.send_fds(conn, [request], [devnull, out_write, err_write])
        for fd in (devnull, out_write, err_write):
            os.close(fd)
        answers = conn.makefile("r")
        pid = int(json.loads(answers.readline())["pid"])
        streams = {}
        readers = [threading.Thread(target=_read_all, args=(fd, streams, name), daemon=True)
                   for fd, name in ((out_read, "stdout"), (err_read, "stderr"))]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + timeout
        for reader in readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        if any(reader.is_alive() for reader in readers):
            _kill(pid)
            for reader in readers:
                reader.join()
            raise subprocess.TimeoutExpired(args, timeout, streams.get("stdout"), streams.get("stderr"))
        conn.settimeout(max(1.0, deadline - time.monotonic()))
        try:
            line = answers.readline()
        except TimeoutError:
            _kill(pid)
            raise subprocess.TimeoutExpired(args, timeout, streams["stdout"], streams["stderr"]) from None
        returncode = int(json.loads(line)["returncode"])
    return subprocess.CompletedProcess(args, returncode, streams["stdout"], streams["stderr"])


def _read_all(fd: int, into: dict, name: str) -> None:
    with open(fd, "rb") as stream:
        into[name] = stream.read().decode(errors="replace")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _server(env: dict[str, str]) -> Path:
    """The address of the running server for `env`'s import-time variables, started if need be."""
    key = tuple((name, env.get(name)) for name in READ_AT_IMPORT)
    with _lock:
        known = _servers.get(key)
        if known is not None and known[0].poll() is None:
            return known[1]
        folder = Path(os.environ.get("TMPDIR", "/tmp"))
        address = folder / f"nmfstudy-preloaded-{os.getpid()}-{len(_servers)}.sock"
        address.unlink(missing_ok=True)
        server_env = {k: v for k, v in os.environ.items() if k not in READ_AT_IMPORT}
        server_env.update({name: value for name, value in key if value is not None})
        process = subprocess.Popen([sys.executable, __file__, str(address)], cwd=ROOT, env=server_env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        ready = process.stderr.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the preloaded interpreter did not start: {ready}{process.stderr.read()[-3000:]}")
        _servers[key] = (process, address)
        return address


def stop_servers() -> None:
    """Stop every server this process started (the pytest worker's session end)."""
    with _lock:
        for process, address in _servers.values():
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            address.unlink(missing_ok=True)
        _servers.clear()


# ----------------------------------------------------------------------------- the server

def _serve(address: str) -> None:
    parent = os.getppid()
    gc.disable()  # as train.py: no cycle collections while a million objects load
    sys.path[0] = str(ROOT / "src")  # as `python src/train.py` has it
    os.chdir(ROOT)
    import report  # noqa: F401
    import train  # noqa: F401

    gc.freeze()  # the imports' objects: out of every later collection's way, in every child
    gc.enable()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    listener.settimeout(1.0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the waiters are reaped as they end
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", file=sys.stderr, flush=True)
    try:
        while os.getppid() == parent:  # a pytest worker that dies takes its server with it
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            if os.fork() == 0:  # the waiter: never back into this loop, whatever happens
                try:
                    listener.close()
                    _wait_for_run(conn, json.loads(message), fds)
                finally:
                    os._exit(0)
            conn.close()
            for fd in fds:
                os.close(fd)
    finally:
        listener.close()
        Path(address).unlink(missing_ok=True)


def _wait_for_run(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """A waiter (a child of the server): forks the run, tells the test its pid, then its exit status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        try:
            conn.close()
            _run(request, fds)
        finally:
            os._exit(1)
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):  # the test has gone (its timeout): the run is its to kill
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"returncode": _returncode(status)}).encode() + b"\n")


def _returncode(status: int) -> int:
    """As subprocess's returncode: the exit status, or minus the signal that ended it."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _run(request: dict, fds: list[int]) -> None:
    """The run itself: `python SCRIPT ARGS...`'s start, main module and exit, on the imports already made."""
    import atexit
    import runpy
    import tempfile

    import numpy as np

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd, target in zip(fds, (0, 1, 2), strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # found again from this run's TMPDIR
    np.random.seed()  # the random module reseeds itself in a forked child; numpy's global state does not
    os.chdir(request["cwd"])
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.path[0] = str(Path(script).resolve().parent)
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BaseException:  # noqa: BLE001 (the interpreter's own behaviour: traceback, status 1)
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # as the interpreter's exit: non-daemon threads first, then atexit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    _serve(sys.argv[1])
