"""Layer-wise (hidden-state) distillation during retraining (pruning.run.hidden_distill, issue 36): zero loss when the
student is the teacher, the layer map around removed layers, CoFi's dynamic matching, bad settings refused up front,
and a heads+neurons run with a whole layer removed that resumes after a SIGKILL bit for bit."""
import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

from conftest import refused, run_script, tiny_args, write_slice
from pruning.run import hidden_distill as hd
from test_resume import finished, kill_and_resume, same_run


def tiny(layers=3):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=12,
        max_position_embeddings=32)).eval()


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_zero_loss_when_the_student_is_the_teacher():
    model = tiny()
    with torch.no_grad():
        states = model(**batch(), output_hidden_states=True).hidden_states
    for layer_map in hd.LAYER_MAPS:
        assert float(hd.hidden_loss(states, states, batch()["attention_mask"], [0, 1, 2], layer_map)) == 0.0


def test_the_fixed_map_skips_removed_layers_and_keeps_the_others_on_their_own_teacher_layer():
    assert hd.fixed_map([0, 1, 2]) == [(1, 1), (2, 2), (3, 3)]
    assert hd.fixed_map([0, 1, 3]) == [(1, 1), (2, 2), (3, 4)]  # layer 2 removed: the student's 3rd is dense layer 3
    assert hd.fixed_map([2, 5]) == [(1, 3), (2, 6)]
    # a student that is the teacher without its layer 1: its layers 0 and 2 match the teacher's exactly at the map
    teacher = tiny()
    student = tiny()
    from pruning.core.surgery import remove_units
    from pruning.core.units import PrunableUnits
    units = PrunableUnits(student, "heads+neurons", ("layer",))
    keep = {n: torch.ones(g.size, dtype=torch.bool) for n, g in units.mask_groups.items()}
    keep["bert.encoder.layer.layers"][1] = False
    remove_units(units, units.compose(keep))
    assert units.live_layers() == [0, 2]
    with torch.no_grad():
        s = student(**batch(), output_hidden_states=True).hidden_states
        t = teacher(**batch(), output_hidden_states=True).hidden_states
    mask = batch()["attention_mask"]
    assert float(hd.token_mse(s[1], t[1], mask)) == 0.0  # layer 0: the same computation
    assert float(hd.hidden_loss(s, t, mask, units.live_layers(), "fixed")) > 0  # layer 2 now reads layer 0's output


def test_token_mse_ignores_padding():
    a, b = torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)
    b[0, 2] = 5.0  # only the padded token differs
    assert float(hd.token_mse(a, b, torch.tensor([[1, 1, 0]]))) == 0.0
    assert float(hd.token_mse(a, b, torch.tensor([[1, 1, 1]]))) == pytest.approx(25 / 3)


def test_dynamic_matching_takes_the_nearest_student_layer():
    t = tuple(torch.full((1, 2, 4), float(v)) for v in (0, 1, 2, 3))     # teacher: embeddings, 3 layers
    s = tuple(torch.full((1, 2, 4), float(v)) for v in (0, 1.9, 3.2))    # student: embeddings, 2 layers
    assert hd.dynamic_pairs(s, t, None) == [(1, 1), (1, 2), (2, 3)]


def test_hidden_distillation_settings_are_checked_before_any_work(capsys, tiny_bert_config, sst2_slice, tmp_path):
    line = refused(capsys, tiny_args(tiny_bert_config, sst2_slice, tmp_path, distill_hidden=-1.0))
    assert "DISTILL_HIDDEN" in line
    line = refused(capsys, tiny_args(tiny_bert_config, sst2_slice, tmp_path, distill_layer_map="nearest"))
    assert "DISTILL_LAYER_MAP" in line


# 20 steps an epoch, EB at step 6 (whole layer removed there), a checkpoint every 3 steps; killed during retraining.
@pytest.fixture(scope="module")
def dense_teacher(tmp_path_factory, tiny_bert_config):
    root = tmp_path_factory.mktemp("hidden")
    data = write_slice(root / "sst2")
    config = root / "three.json"
    config.write_text(json.dumps({**json.loads(tiny_bert_config.read_text()), "num_hidden_layers": 3}))
    proc = run_script("bert.py", tiny_args(config, data, root / "out", trainer="dense", run_name="teacher"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, data, config, root / "out" / "teacher"


def test_a_run_with_hidden_distillation_and_a_removed_layer_resumes_after_a_kill_exactly(dense_teacher, tmp_path):
    root, data, config, teacher = dense_teacher
    settings = dict(trainer="fisher", granularity="heads+neurons", layer_rate=0.34, save_every=3, teacher=teacher,
                    distill_hidden=1.0)
    proc = run_script("bert.py", tiny_args(config, data, tmp_path / "ref", run_name="ref", **settings))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = finished(tmp_path / "ref", "ref")
    assert len(reference[0]["pruning"]["structure"]["layers_kept"]) == 2
    resumed = kill_and_resume(config, data, tmp_path / "killed", settings, 17, 15, "retrain")
    same_run(reference, resumed)
    # the hidden term changes the retraining: the same run without it ends with other weights
    plain = run_script("bert.py", tiny_args(config, data, tmp_path / "plain", run_name="plain",
                                            **{**settings, "distill_hidden": 0.0}))
    assert plain.returncode == 0, plain.stderr[-3000:]
    other = finished(tmp_path / "plain", "plain")[1]
    assert any(not torch.equal(other[k], reference[1][k]) for k in other)
