"""A variant directory is a deployable artifact (pruning.deploy.artifact): its classify.py loads the model and the
tokenizer and classifies raw sentences in a process where torch (and transformers, and this repository)
cannot be imported, and gives the labels the toolkit's own runner gives."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pruning.deploy import artifact, runtimes
from test_vocab import TRAIN, tiny_model, tiny_tokenizer

TEXTS = ["the film is good", "a very dull plot and a bad actor", "the movie was great"]


def blocked_env(tmp_path):
    """PYTHONPATH first holds packages named torch, transformers and pruning whose import raises ImportError."""
    blocker = tmp_path / "blocker"
    for name in ("torch", "transformers", "pruning"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is not available here')\n")
    return {**os.environ, "PYTHONPATH": str(blocker)}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_variant_classifies_sentences_without_torch(tmp_path, runtime):
    tokenizer, model = tiny_tokenizer(), tiny_model(seed=3)
    probe = {k: v.numpy() for k, v in tokenizer(TRAIN, padding=True, return_tensors="pt").items()}
    variant = tmp_path / "variant"
    variant.mkdir()
    runtimes.export_onnx(model, variant, probe)
    if runtime == "openvino":
        onnx_dir, variant = variant, tmp_path / "ov-variant"
        variant.mkdir()
        runtimes.convert_openvino(onnx_dir, variant, probe)
    artifact.write_files(variant, tokenizer, ["negative", "positive"], tuple(probe), max_length=16, pair=False)
    artifact.write_card(variant, "tiny: pruned · fp32", [("dev accuracy", "0.5000")], "python compress.py RUN", "today")
    card = (variant / "README.md").read_text()
    assert "| dev accuracy | 0.5000 |" in card and "import torch" not in card and "from tokenizers import" in card
    assert json.loads((variant / "deploy.json").read_text())["runtime"] == runtime

    env = blocked_env(tmp_path)
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, cwd=tmp_path, capture_output=True,
                           text=True)
    assert check.returncode != 0 and "torch is not available here" in check.stderr  # the block works
    done = subprocess.run([sys.executable, str(variant / "classify.py"), *TEXTS], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = [line.split("\t") for line in done.stdout.strip().splitlines()]

    batch = {k: v.numpy() for k, v in tokenizer(TEXTS, padding=True, return_tensors="pt").items()}
    expected = runtimes.runner(variant, 1)(batch).argmax(-1)
    assert printed == [[["negative", "positive"][i], t] for i, t in zip(expected, TEXTS)]
    # the shipped tokenizer gives the ids the toolkit's tokenizer gives, padding included
    from tokenizers import Tokenizer
    shipped = Tokenizer.from_file(str(variant / "tokenizer.json")).encode_batch(TEXTS)
    np.testing.assert_array_equal(np.array([e.ids for e in shipped]), batch["input_ids"])
    np.testing.assert_array_equal(np.array([e.attention_mask for e in shipped]), batch["attention_mask"])
