"""Heads + neurons through the scripts: end to end, the saved model, fixed masks, user-written Trainers."""
import json
import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from conftest import REPO, only_run_dir, run_script, tiny_args
from pruning import prunable_parameters
from pruning.data import loading as sst2

STRUCTURED = {"granularity": "heads+neurons", "head_rate": 0.5, "neuron_rate": 0.4}


def results_of(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def dev_accuracy(model_dir, data_dir):
    """Accuracy of a saved model loaded in this (fresh) process, batched as the run's evaluation is."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    dev = sst2.tokenize(sst2.load_sst2(str(data_dir))[0], tok, 128)["validation"]
    collate, correct = DataCollatorWithPadding(tok), 0
    for i in range(0, len(dev), 128):
        rows = dev.select(range(i, min(i + 128, len(dev))))
        b = collate([{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in rows])
        with torch.no_grad():
            correct += int((model(**b).logits.argmax(-1) == torch.tensor(rows["label"])).sum())
    return correct / len(dev), model


@pytest.mark.parametrize("trainer", ["gradient", "slimming", "activation"])
def test_structured_run_end_to_end(trainer, tiny_bert_config, sst2_slice, tmp_path):
    args = tiny_args(tiny_bert_config, sst2_slice, tmp_path, trainer=trainer, measure_speed=trainer == "gradient",
                     **STRUCTURED)
    proc = run_script("bert.py", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    res = results_of(run_dir)
    p, s = res["pruning"], res["pruning"]["structure"]
    assert p["granularity"] == "heads+neurons" and p["criterion"] == trainer
    # retraining (20 steps) continued on the smaller model after the restart from the pruning checkpoint
    assert p["eb_found"] and res["optimizer_steps"] == p["eb_step"] + 20
    assert set(p["distance_history"]) == {"heads", "neurons"}
    assert s["heads_kept_per_layer"] == [1, 1] and s["neurons_kept_per_layer"] != [64, 64]
    assert sum(64 - n for n in s["neurons_kept_per_layer"]) == round(0.4 * 128)
    split = res["parameters"]
    removed = sum(p["removed_units"].values())
    assert removed == 2 + round(0.4 * 128)
    # each head: Q/K/V rows with biases (3 x 16 x 33) and 16 output columns (16 x 32); each neuron: 33 + 32
    assert split["dense"]["encoder"] - split["final"]["encoder"] == 2 * (3 * 16 * 33 + 16 * 32) + 51 * 65
    assert split["final"]["embeddings"] == split["dense"]["embeddings"]
    assert (run_dir / "structure.png").stat().st_size > 1000 and (run_dir / "masks.safetensors").exists()
    if trainer == "gradient":
        speed = res["speed"]
        assert speed["batch64_pruned"] > 0 and speed["train_step_pruned"] > 0 and speed["threads"] >= 1
        assert "speed vs a dense model" in proc.stdout
    accuracy, model = dev_accuracy(run_dir / "model", sst2_slice)
    assert accuracy == res["metrics"]["final"]["accuracy"]
    assert model.config.kept_heads == s["heads_kept"]
    assert not any("coefficient" in k for k in model.state_dict())
    assert [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer] == s["neurons_kept_per_layer"]


def test_plain_from_pretrained_refuses_a_structured_model(tiny_bert_config, sst2_slice, tmp_path):
    proc = run_script("bert.py", tiny_args(tiny_bert_config, sst2_slice, tmp_path, **STRUCTURED))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with pytest.raises(RuntimeError, match="mismatched"):  # the stock class refuses the smaller weights
        AutoModelForSequenceClassification.from_pretrained(only_run_dir(tmp_path) / "model")


@pytest.mark.parametrize("granularity", ["weights", "heads+neurons"])
def test_fixed_mask_from_another_run_is_trained_and_never_changes(granularity, tiny_bert_config, sst2_slice, tmp_path):
    extra = STRUCTURED if granularity == "heads+neurons" else {"pruning_rate": 0.6}
    source = run_script("bert.py", tiny_args(tiny_bert_config, sst2_slice, tmp_path, run_name="source",
                                             trainer="gradient", save_eb_weights=True, **extra))
    assert source.returncode == 0, source.stderr[-3000:]
    fixed = run_script("bert.py", tiny_args(tiny_bert_config, sst2_slice, tmp_path, run_name="fixed",
                                            trainer="magnitude", mask_from=tmp_path / "source",
                                            rewind_to="early_bird", seed=7, **extra))
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    a, b = results_of(tmp_path / "source"), results_of(tmp_path / "fixed")
    assert b["pruning"]["fixed_mask_from"] == str(tmp_path / "source") and b["optimizer_steps"] == 40
    assert b["pruning"]["mask_fingerprint"] == a["pruning"]["mask_fingerprint"]
    # the early-bird weights were restored before masking: the fixed run starts where the source pruned
    assert b["metrics"]["after_prune"]["accuracy"] == a["metrics"]["after_prune"]["accuracy"]
    if granularity == "weights":
        wa = prunable_parameters(AutoModelForSequenceClassification.from_pretrained(tmp_path / "source" / "model"))
        wb = prunable_parameters(AutoModelForSequenceClassification.from_pretrained(tmp_path / "fixed" / "model"))
        assert all(torch.equal(wa[n] == 0, wb[n] == 0) for n in wa)   # the same zeros, after 40 steps of training
        assert any(not torch.equal(wa[n], wb[n]) for n in wa)          # ... on weights that did train
    else:
        assert b["pruning"]["structure"] == a["pruning"]["structure"]
    wrong = run_script("bert.py", tiny_args(tiny_bert_config, sst2_slice, tmp_path, run_name="wrong",
                                            granularity="heads+neurons" if granularity == "weights" else "weights",
                                            mask_from=tmp_path / "source"))
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "GRANULARITY to match the source run" in wrong.stderr and not (tmp_path / "wrong" / "results.json").exists()


USER_SCRIPT = '''
import torch
from pruning import Criterion, PruningTrainer


class RandomCriterion(Criterion):
    """Scores every unit at random (fixed seed): the baseline a real criterion must beat."""
    name = "random"

    def scores(self):
        g = torch.Generator().manual_seed(0)
        return {n: torch.rand(self.units.live_size(n), generator=g) if self.units.structured
                else torch.rand(grp.shape, generator=g) for n, grp in self.units.groups.items()}


class RandomPruningTrainer(PruningTrainer):
    criterion_class = RandomCriterion


TRAINER = RandomPruningTrainer
'''


def test_a_trainer_written_in_a_copy_of_bert_py_runs(tiny_bert_config, sst2_slice, tmp_path):
    script = (REPO / "bert.py").read_text()
    body, main = script.rsplit('if __name__ == "__main__":', 1)  # the last one: the run (the first answers --help)
    (tmp_path / "my_bert.py").write_text(body + USER_SCRIPT + 'if __name__ == "__main__":' + main)
    out = tmp_path / "runs"
    for extra in ({}, STRUCTURED):
        proc = run_script(str(tmp_path / "my_bert.py"), tiny_args(tiny_bert_config, sst2_slice, out,
                                                                 run_name=f"random-{len(extra)}", **extra),
                          cwd=tmp_path)  # from the user's own folder, as before the run was forked
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = results_of(out / f"random-{len(extra)}")
        assert res["trainer"] == "random" and res["pruning"]["criterion"] == "random"


@pytest.mark.parametrize("args,message", [
    (["--granularity=blocks"], "unknown granularity .blocks.; choose one of weights, heads\\+neurons"),
    (["--granularity=heads+neurons", "--head_rate=1.0"], r"head rate must be a number in \[0, 1\)"),
    (["--granularity=heads+neurons", "--neuron_rate=-0.2"], r"neuron rate must be a number in \[0, 1\)"),
    (["--granularity=heads+neurons", "--head_rate=0.8"], "head rate 0.8 would remove all 2 heads of layer 0"),
    (["--granularity=heads+neurons", "--head_rate=0.5,0.5,0.5"], "3 per-layer head rates given, but the model has 2"),
    (["--trainer=slimming"], "TRAINER SlimmingPruningTrainer prunes heads\\+neurons, not 'weights'"),
    (["--trainer=slimming", "--granularity=heads+neurons", "--slimming_l1=-1"], "slimming L1 penalty must be >= 0"),
    (["--mask_from=/nowhere"], "MASK_FROM=/nowhere: no masks.safetensors there"),
])
def test_structured_bad_input_is_one_clear_line_before_training(args, message, tiny_bert_config, sst2_slice, tmp_path):
    proc = run_script("bert.py", tiny_args(tiny_bert_config, sst2_slice, tmp_path / "out", run_name="bad") + args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(message, errors[0]), errors[0]
    assert not (tmp_path / "out" / "bad" / "checkpoints").exists()
