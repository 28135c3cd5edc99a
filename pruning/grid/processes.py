"""Python scripts run in processes of their own, forked from a server that imported the heavy libraries
once (multiprocessing's "forkserver" start method, with `PRELOAD` imported in the server).

A grid cell (`pruning.grid.cells.run_cell`) and a test's script run are whole runs of a script in a process
of their own: their own argv, working directory, environment, standard output and exit status, killed
alone by a signal. Started with `python script.py`, each such process spends most of a tiny run on
imports (torch, transformers, datasets: about 6 s of CPU on the project's machines). Forked from the
server, it finds them imported: the server has only imported them (no model, no data, no thread pool
started), so the child starts as a fresh interpreter would, less the import time.

What differs from `python script.py`: the modules in PRELOAD are imported once, with the environment
the server started with (read at import time by a few libraries: HF_HUB_OFFLINE, for example), and
multiprocessing re-imports the caller's main module as `__mp_main__` in the child (every script here
guards its work with `if __name__ == "__main__"`); everything else, including the environment the
script sees and its exit handlers (`atexit`, run before the child exits), is the caller's.

A forked run's own runs (the cells of a study that the tests run as a script) are forked by the same server, not
by a second one that would import everything again.

A forked run does not outlive its caller. Its parent is the server, which a killed caller leaves behind, so
each run watches its caller and kills itself (SIGKILL, which every run resumes from) once the caller is gone;
otherwise a study killed and started again would have two runs training into one directory. Source:
https://docs.python.org/3/library/multiprocessing.html#contexts-and-start-methods
"""
from __future__ import annotations

import atexit
import gc
import multiprocessing
import os
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

# What every run imports: the libraries, and what its plots (matplotlib) and metrics (scipy, scikit-learn) load
# lazily (about 0.8 s of a run otherwise; pyplot chooses no backend on import: the plots still select Agg). Not
# compress.py's exporters and runtimes: most runs are trainings, and every server start would pay for them.
PRELOAD = ("torch", "transformers", "datasets", "pruning.run.experiment", "matplotlib.pyplot", "scipy.stats",
           "sklearn.metrics")
WATCH_SECONDS = 1.0  # how often a forked run checks that its caller is alive
_context = None


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(list(PRELOAD))
    return _context


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, but another user's
        return True
    return True


def _end_with(caller: int) -> None:
    """Kill this process (SIGKILL) once the process `caller` has gone."""
    while _alive(caller):
        time.sleep(WATCH_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


def _use_this_server() -> None:
    """In a forked run: its own runs (a study's cells) are forked by the server that forked it, instead of a new
    server importing PRELOAD again (about 7 s of CPU). multiprocessing hands the child the server's address,
    its "alive" pipe and the resource tracker's pipe, but not the server's pid, so its ensure_running() would
    start another server; here it only checks the resource tracker. Where those internals differ (another
    Python), nothing changes and a new server starts as before."""
    from multiprocessing import forkserver, resource_tracker
    server = getattr(forkserver, "_forkserver", None)
    if getattr(server, "_forkserver_address", None) and getattr(server, "_forkserver_alive_fd", None) is not None:
        server.ensure_running = resource_tracker.ensure_running


def _main(script: str, args: list[str], cwd: str, env: dict, stdout: str, stderr: str, caller: int) -> None:
    """The child: the caller's directory, environment and output files, then the script as __main__; it dies
    with its caller (`_end_with`)."""
    gc.freeze()  # the preloaded modules' objects: full collections (HF's Trainer runs one per train()) skip them
    _use_this_server()
    threading.Thread(target=_end_with, args=(caller,), daemon=True, name="end-with-caller").start()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    out = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    err = out if stderr == stdout else os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))  # as `python script.py` puts it first
    try:
        runpy.run_path(script, run_name="__main__")
    finally:  # a multiprocessing child ends with os._exit: run the exit handlers an interpreter would
        atexit._run_exitfuncs()


def run_python(script: str | Path, args: list[str], stdout: str | Path, stderr: str | Path | None = None,
               cwd: str | Path | None = None, env: dict | None = None, timeout: float | None = None) -> int:
    """Run `python script *args` in a process of its own, forked from the preloaded server; its standard
    output (and error, unless `stderr` names another file) is appended to the file `stdout`. Returns
    its exit status as subprocess does: the script's exit code, 1 for an uncaught exception, -N when
    signal N killed it. `env` defaults to this process's environment now, `cwd` to its directory.
    Raises TimeoutError (after killing it) when it runs longer than `timeout` seconds."""
    process = _server().Process(target=_main, args=(str(script), [str(a) for a in args], str(cwd or os.getcwd()),
                                                     dict(os.environ if env is None else env), str(stdout),
                                                     str(stderr or stdout), os.getpid()))
    process.start()
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"{script} ran longer than {timeout} s; killed")
    return process.exitcode
