"""A script run forked from the preloaded server behaves as `python script.py` would: its own argv,
directory, environment, output, exit status, death by signal and exit handlers."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pruning.grid import processes
from pruning.grid.processes import run_python

SCRIPT = textwrap.dedent("""
    import atexit, os, signal, sys
    atexit.register(lambda: print("exit handler", flush=True))
    if __name__ == "__main__":
        print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("PROBE"), flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        if sys.argv[1] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if sys.argv[1] == "raise":
            raise RuntimeError("boom")
        sys.exit(int(sys.argv[1]))
""")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(SCRIPT)
    return path


def test_a_forked_run_has_the_callers_argv_directory_environment_and_exit_status(script, tmp_path):
    (tmp_path / "here").mkdir()
    status = run_python(script, ["3"], tmp_path / "out", tmp_path / "err", cwd=tmp_path / "here",
                        env={**os.environ, "PROBE": "yes"})
    out = (tmp_path / "out").read_text()
    assert status == 3 and f"argv ['3'] cwd {tmp_path / 'here'} env yes" in out and "exit handler" in out
    assert (tmp_path / "err").read_text() == "to stderr\n"


@pytest.mark.parametrize("arg,status,expected", [("kill", -9, None), ("raise", 1, "RuntimeError: boom"),
                                                 ("0", 0, "exit handler")])
def test_a_forked_run_dies_and_fails_as_a_script_would(arg, status, expected, script, tmp_path):
    assert run_python(script, [arg], tmp_path / "log") == status
    log = (tmp_path / "log").read_text()
    assert expected is None or expected in log
    assert arg != "kill" or "exit handler" not in log  # SIGKILL runs no handler


def test_a_run_past_its_timeout_is_killed(tmp_path):
    (tmp_path / "slow.py").write_text("import time\nif __name__ == '__main__':\n    time.sleep(60)\n")
    with pytest.raises(TimeoutError, match="slow.py ran longer than 1 s"):
        run_python(tmp_path / "slow.py", [], tmp_path / "log", timeout=1)


STUDY = textwrap.dedent("""
    import os, sys
    from pruning.grid.processes import run_python
    if __name__ == "__main__":
        print("study", os.getppid(), flush=True)
        status = run_python(sys.argv[1], ["7"], sys.argv[2])
        print("cell status", status, flush=True)
""")
CELL = textwrap.dedent("""
    import os, sys
    if __name__ == "__main__":
        print("cell", os.getppid(), "torch" in sys.modules, flush=True)
        sys.exit(int(sys.argv[1]))
""")


def test_a_forked_runs_own_runs_are_forked_by_the_same_server(tmp_path):
    """A study run as a forked script (as the tests run every study) forks its cells from the server
    that forked it: no second server importing torch again. The cell finds torch preloaded, and its status comes
    back to the study."""
    (tmp_path / "study.py").write_text(STUDY)
    (tmp_path / "cell.py").write_text(CELL)
    assert run_python(tmp_path / "study.py", [tmp_path / "cell.py", tmp_path / "cell.log"], tmp_path / "study.log") == 0
    study = (tmp_path / "study.log").read_text().split()
    cell = (tmp_path / "cell.log").read_text().split()
    assert study[0] == "study" and cell[0] == "cell" and cell[1] == study[1] and cell[2] == "True"
    assert study[-3:] == ["cell", "status", "7"]


CALLER = textwrap.dedent("""
    import sys
    import processes  # pruning/grid/processes.py, copied beside this file: the package would import torch and HF
    if __name__ == "__main__":
        processes.PRELOAD = ()  # the sleeper needs none of it: the server starts at once
        processes.run_python(sys.argv[1], [], sys.argv[2])
""")
SLEEPER = textwrap.dedent("""
    import os, time
    if __name__ == "__main__":
        print(os.getpid(), flush=True)
        time.sleep(120)
""")


def test_a_forked_run_dies_with_its_caller(tmp_path):
    """A study killed (SIGKILL: no handler runs) takes its running script along, instead of leaving it to train
    beside the study started again."""
    (tmp_path / "caller.py").write_text(CALLER)
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    shutil.copy(Path(processes.__file__), tmp_path / "processes.py")  # it imports nothing of the package
    out = tmp_path / "out"
    caller = subprocess.Popen([sys.executable, str(tmp_path / "caller.py"), str(tmp_path / "sleeper.py"), str(out)])
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    child = int(out.read_text())
    os.kill(child, 0)  # running
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the forked run outlived its caller")
