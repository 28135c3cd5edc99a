"""The package's architecture, enforced: import-linter's contracts (pyproject.toml: layers import downwards only, no
circles among a layer's modules, a torch-free front door), the rules of the files that run outside the package, every
script's --help without torch, and a model saved before the package was layered still loading with one call."""
import ast
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from pruning.core.pruned_model import pruned_class_of

REPO = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names)
SCRIPTS = ["bert.py", "roberta.py", "sweep.py", "report.py", "lottery.py", "allocate.py", "frontier.py", "compress.py",
           "prune_finetuned.py", "prune_finetuned_study.py", "speed_prune.py", "resnet.py", "mlp.py", "bench.py", "bench_structure.py", "bench_gpu.py"]


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module a file imports (absolute names; a relative import as '.name'), anywhere in the file or only in
    its top-level statements (an `if`/`try` at the top level included)."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if not top_level_only else (n for stmt in tree.body for n in ast.walk(stmt)
                                                        if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef)))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def test_the_import_contracts_hold():
    lint = shutil.which("lint-imports")
    assert lint, "import-linter is in requirements.txt: pip install -r requirements.txt"
    done = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "layers import downwards only KEPT" in done.stdout


def test_the_contracts_would_catch_an_upward_import(tmp_path):
    """The layers contract is live: a core module that imports the run layer breaks it."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "pruning", copy / "pruning", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    (copy / "pruning" / "core" / "masks.py").write_text((copy / "pruning" / "core" / "masks.py").read_text()
                                                       + "\nfrom pruning.run import trainer  # noqa\n")
    done = subprocess.run([shutil.which("lint-imports"), "--no-cache"], cwd=copy, capture_output=True, text=True,
                          env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "pruning.core.masks -> pruning.run.trainer" in done.stdout


def test_the_files_copied_into_saved_models_import_only_torch_transformers_hub_and_each_other():
    for name in ("layouts.py", "pruned_model.py"):
        for module in imported_modules(REPO / "pruning" / "core" / name):
            top = module.lstrip(".").split(".")[0]
            assert (top in STDLIB or top in ("torch", "transformers", "huggingface_hub", "layouts") or module == "pruning.core.layouts"), \
                f"{name} imports {module}: it is copied next to saved models, where only torch and transformers (with huggingface_hub) exist"


def test_the_early_bird_detector_imports_nothing_from_pruning():
    assert not {m for m in imported_modules(REPO / "earlybird.py") if m.split(".")[0] == "pruning"}


def test_the_deployment_runner_imports_neither_torch_nor_the_toolkit_beyond_host_at_its_top():
    """pruning/deploy/runtimes.py also runs as a bare script in a fresh process whose memory is the runtime's."""
    top = imported_modules(REPO / "pruning" / "deploy" / "runtimes.py", top_level_only=True)
    assert not {m for m in top if m.split(".")[0] in ("torch", "transformers", "datasets")}
    assert {m for m in top if m.split(".")[0] == "pruning"} == {"pruning.host"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_scripts_help_returns_without_importing_torch(script):
    probe = ("import runpy, sys\nsys.argv = [sys.argv[1], '--help']\ntry:\n    runpy.run_path(sys.argv[0], "
             "run_name='__main__')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
             "print('torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--" in done.stdout and done.stdout.strip().splitlines()[-1] == "False False", done.stdout[-500:]


def test_a_misspelt_setting_is_refused_without_importing_torch():
    probe = ("import runpy, sys\nsys.argv = ['bert.py', '--pruning_rte=0.3']\ntry:\n    runpy.run_path('bert.py', "
             "run_name='__main__')\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == "2 False", done.stdout + done.stderr[-2000:]
    assert done.stderr.startswith("error: unknown setting --pruning_rte; known settings: --model")


OLD_COMMIT = "05c71de"  # the commit before the package was layered


@pytest.fixture(scope="module")
def old_saved_model(tmp_path_factory):
    """A heads+neurons BERT saved by commit 05c71de's own code (flat package), with its logits: that commit's
    tree, taken from the repository's history (`git archive`) runs tests/data/make_old_pruned_model.py. No
    weights are kept in the repository."""
    tmp = tmp_path_factory.mktemp("old")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", OLD_COMMIT],
                             capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"needs commit {OLD_COMMIT} in the repository's history (a full clone, not a shallow one): "
                    f"{archive.stderr.decode()[-300:]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp / "tree", filter="data")
    made = subprocess.run([sys.executable, str(REPO / "tests" / "data" / "make_old_pruned_model.py"), str(tmp / "model")],
                          cwd=tmp / "tree", capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    return tmp / "model"


@pytest.mark.parametrize("how", ["from_pretrained", "toolkit"])
def test_a_model_saved_before_the_package_was_layered_loads_with_one_call(how, old_saved_model, tmp_path):
    """A heads+neurons BERT saved by commit 05c71de (flat package) loads with today's code and gives its logits."""
    saved = shutil.copytree(old_saved_model, tmp_path / "model")
    expected = json.loads((saved / "expected.json").read_text())
    if how == "from_pretrained":
        model = AutoModelForSequenceClassification.from_pretrained(saved, trust_remote_code=True)
    else:  # the toolkit's own classes: how a pruned model/ is given as MODEL to be pruned again
        model = pruned_class_of(AutoConfig.from_pretrained(saved)).from_pretrained(saved)
    ids = torch.tensor(expected["input_ids"])
    with torch.no_grad():
        logits = model.eval()(input_ids=ids, attention_mask=(ids != 0).long()).logits
    assert [len(layer.attention.self.query.weight) for layer in model.bert.encoder.layer] == [16, 24]
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), rtol=0, atol=1e-6)
