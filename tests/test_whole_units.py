"""Whole MLPs and whole encoder layers as unit kinds (MLP_RATE, LAYER_RATE): their scores and masks on hand-built
cases, removal equal to gating on every family, parameter counts, save -> fresh-process load, ONNX export, and a
run end to end that resumes after a kill in the retrain phase exactly as it would have gone on."""
import json

import numpy as np
import pytest
import torch

from conftest import TINY, run_script
from pruning import PrunableUnits, PruningConfig
from pruning.core.layouts import BY_MODEL_TYPE, layout_of
from pruning.core.pruned_model import as_pruned_model, per_layer_structure
from pruning.core.surgery import UnitGates, remove_units
from test_families import (EAGER_ONLY, FAMILIES, HEAD_SIZE, HEADS, HIDDEN, NEURONS, PER_HEAD, PER_NEURON,
                           RUN_CONFIGS, batch, config_of, logits)
from test_resume import finished, kill_and_resume, reference_run, same_run

LAYERS = 3
REMOVED_LAYER, NO_MLP = 1, 2  # dense layer indices


def tiny(family: str, attn: str = "eager"):
    from transformers import AutoModelForSequenceClassification
    config = config_of(family)
    settings = config.to_dict()
    for key in ("model_type", "layer_types"):  # ModernBERT derives its layer types from the layer count
        settings.pop(key, None)
    config = type(config)(**{**settings, BY_MODEL_TYPE[config.model_type].config_layers: LAYERS})
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.set_attn_implementation(attn)
    return model.eval()


def whole_masks(units):
    """Layer 0 keeps heads 1, 3 and neurons 0..9; layer 1 is removed; layer 2 keeps head 2 and loses its MLP."""
    keep = {}
    for n, g in units.groups.items():
        if g.kind == "head":
            keep[n] = torch.tensor([False, True, False, True]) if g.layer == 0 else torch.arange(HEADS) == 2
        else:
            keep[n] = torch.arange(NEURONS) < 10
    keep[units.whole_group("mlp").name] = torch.arange(LAYERS) != NO_MLP
    keep[units.whole_group("layer").name] = torch.arange(LAYERS) != REMOVED_LAYER
    return units.compose(keep)


class Gated:
    """The dense model computing what the pruned one should: head and neuron gates (`UnitGates`), a zero on
    the whole MLP's output (its bias included), and a layer that returns its input."""

    def __init__(self, model, units, keep):
        layout = layout_of(model)
        self.gates = UnitGates(units, {n: keep[n].float() for n in units.groups})
        layers = layout.layer_list(model)
        self.handles = [layers[NO_MLP].get_submodule(layout.ffn_down).register_forward_hook(
                            lambda module, args, out: out * 0),
                        layers[REMOVED_LAYER].register_forward_hook(self._identity, with_kwargs=True)]

    @staticmethod
    def _identity(module, args, kwargs, out):
        hidden = args[0] if args else next(iter(kwargs.values()))
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    def remove(self):
        self.gates.remove()
        for h in self.handles:
            h.remove()


def test_whole_scores_sum_their_units_and_the_selection_carries_down_to_them():
    model = tiny("bert")
    units = PrunableUnits(model, "heads+neurons", ("mlp", "layer"))
    heads = {0: [1.0, 1, 1, 1], 1: [3.0, 3, 3, 3], 2: [2.0, 2, 2, 2]}  # head sums 4, 12, 8 (mean 8)
    neurons = {0: 2.0, 1: 0.5, 2: 1.0}                                 # MLP sums 32, 8, 16 (mean 56/3)
    scores = {n: torch.tensor(heads[g.layer]) if g.kind == "head" else torch.full((NEURONS,), neurons[g.layer])
              for n, g in units.groups.items()}
    whole = units.whole_scores(scores)
    assert whole["bert.encoder.layer.mlps"].tolist() == [32.0, 8.0, 16.0]
    # the last layer scores the largest float32: the classifier reads its first token (issue 36,
    # units.protected_layers), so a score-based pick never removes it
    expected = [4 / 8 + 32 / (56 / 3), 12 / 8 + 8 / (56 / 3), torch.finfo(torch.float32).max / 2]
    torch.testing.assert_close(whole["bert.encoder.layer.layers"], torch.tensor(expected))
    config = PruningConfig(granularity="heads+neurons", head_rate=0.25, neuron_rate=0.0, mlp_rate=1 / 3,
                           layer_rate=1 / 3)
    masks = config.select(units, {**scores, **whole})
    # layers: 2.21, 1.93, (kept): layer 1 goes, and its MLP with it (its MLP also scores lowest, sum 8)
    assert masks["bert.encoder.layer.mlps"].tolist() == [True, False, True]
    assert masks["bert.encoder.layer.layers"].tolist() == [True, False, True]
    assert not masks["bert.encoder.layer.1.heads"].any() and not masks["bert.encoder.layer.1.neurons"].any()
    assert masks["bert.encoder.layer.2.neurons"].all() and masks["bert.encoder.layer.2.heads"].sum() == 3
    assert masks["bert.encoder.layer.0.neurons"].all() and masks["bert.encoder.layer.0.heads"].sum() == 3
    removed = remove_units(units, masks)
    assert removed["bert.encoder.layer.layers"] == 1 and removed["bert.encoder.layer.mlps"] == 1
    assert units.live_layers() == [0, 2] and model.config.num_hidden_layers == 2
    live_scores = {n: scores[n][g.origin] for n, g in units.groups.items()}
    again = units.whole_scores(units.to_original(live_scores, float("-inf")))
    assert again["bert.encoder.layer.layers"][1] == float("-inf") and again["bert.encoder.layer.mlps"][1] == float("-inf")


@pytest.mark.parametrize(("family", "attn"), [(f, a) for f in FAMILIES for a in ("eager", "sdpa")
                                               if a == "eager" or f not in EAGER_ONLY])
def test_removing_whole_mlps_and_layers_equals_gating_them_and_drops_their_parameters(family, attn):
    model = tiny(family, attn)
    units = PrunableUnits(model, "heads+neurons", ("mlp", "layer"))
    keep = whole_masks(units)
    gated = Gated(model, units, keep)
    expected = logits(model)
    gated.remove()
    assert not torch.allclose(logits(model), expected, atol=1e-4)
    before = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters())
    remove_units(units, keep, optimizer)
    torch.testing.assert_close(logits(model), expected, rtol=1e-5, atol=1e-6)
    layout = layout_of(model)
    assert len(layout.layer_list(model)) == LAYERS - 1 == getattr(model.config, layout.config_layers)
    per_head = PER_HEAD.get(family, 3 * HEAD_SIZE * (HIDDEN + 1) + HEAD_SIZE * HIDDEN)
    per_neuron = PER_NEURON.get(family, 2 * HIDDEN + 1)
    removed_layer = sum(p.numel() for p in tiny(family).get_submodule(
        f"{units.prefix}.{REMOVED_LAYER}").parameters())
    # layer 0: 2 heads and 6 neurons; layer 1: everything; layer 2: 3 heads, every neuron and the MLP's bias
    assert before - sum(p.numel() for p in model.parameters()) == \
        removed_layer + 5 * per_head + (6 + NEURONS) * per_neuron + HIDDEN
    assert per_layer_structure(model) == {"attention_heads_per_layer": [2, 1], "intermediate_size_per_layer": [10, 0]}
    live = {id(p) for p in model.parameters()}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == live  # what left the model left AdamW


def test_models_with_whole_units_removed_save_load_in_a_fresh_process_and_export_to_onnx(tmp_path):
    from pruning.deploy.runtimes import export_onnx
    directories = []
    for family in FAMILIES:
        model = tiny(family, "eager" if family in EAGER_ONLY else "sdpa")
        units = PrunableUnits(model, "heads+neurons", ("mlp", "layer"))
        remove_units(units, whole_masks(units))
        as_pruned_model(model, [units.groups[f"{units.prefix}.{i}.heads"].origin.tolist() for i in units.live_layers()],
                        units.live_layers())
        directory = tmp_path / family
        model.save_pretrained(directory)
        torch.save({"batch": batch(), "logits": logits(model)}, directory / "expected.pt")
        directories.append(directory)
        if family in ("bert", "distilbert", "deberta-v3", "modernbert"):
            probe = {k: v.numpy().astype(np.int64) for k, v in batch().items()}
            (tmp_path / f"{family}-onnx").mkdir()
            export_onnx(model, tmp_path / f"{family}-onnx", probe)  # DeployError when the logits differ by > 1e-3
    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["kept_layers"] == [0, 2]
    assert config["intermediate_size_per_layer"] == [10, 0]
    proc = run_script("tests/load_pruned_models.py", directories)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(line.startswith("ok ") for line in proc.stdout.splitlines()) == len(FAMILIES)


def test_whole_rates_are_checked_before_any_model_is_built():
    with pytest.raises(ValueError, match="MLP_RATE .* one number in \\[0, 1\\)"):
        PruningConfig(granularity="heads+neurons", mlp_rate=1.0)
    with pytest.raises(ValueError, match="need GRANULARITY='heads\\+neurons'"):
        PruningConfig(granularity="weights", layer_rate=0.5)
    with pytest.raises(ValueError, match="GRADUAL_UPDATES with MLP_RATE or LAYER_RATE"):
        PruningConfig(granularity="heads+neurons", layer_rate=0.5, gradual_updates=2)
    units = PrunableUnits(tiny("bert"), "heads+neurons", ("layer",))
    with pytest.raises(ValueError, match="would remove all 3 encoder layers"):
        PruningConfig(granularity="heads+neurons", layer_rate=0.9).check_model(units)


# A 4-layer tiny BERT: one layer and one more MLP go at the end of the search (step 20: a 4-unit mask moves by
# 0.25 a unit, so these detectors stay above EB_EPSILON=0.5 here); retraining runs to step 40.
WHOLE = dict(trainer="gradient", save_every=3, granularity="heads+neurons", head_rate=0.5, mlp_rate=0.25,
             layer_rate=0.25)


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "tiny-bert-4.json"
    path.write_text(json.dumps({"model_type": "bert", "vocab_size": 30522, "max_position_embeddings": 128,
                                **TINY, "num_hidden_layers": 4}))
    return path


# Two MLPs: since the classifier's (last) layer is kept by score (issue 36), the layer that goes may take the lowest
# MLP with it; the second one then goes from a layer that stays.
WHOLE_BERT = dict(WHOLE, mlp_rate=0.5)


def test_a_run_removing_whole_units_resumes_after_a_kill_in_retraining_exactly(four_layers, sst2_slice, tmp_path):
    reference = reference_run(four_layers, sst2_slice, tmp_path / "reference", WHOLE_BERT)
    results = reference[0]
    structure = results["pruning"]["structure"]
    assert len(structure["layers_kept"]) == 3 and 3 in structure["layers_kept"]
    assert set(structure["mlps_kept"]) < set(structure["layers_kept"])  # a kept layer without its MLP
    gone = set(range(4)) - set(structure["layers_kept"])
    assert all(structure["heads_kept_per_layer"][i] == 0 and structure["neurons_kept_per_layer"][i] == 0 for i in gone)
    assert results["pruning"]["mlp_rate"] == 0.5 and "layers" in results["pruning"]["distance_history"]
    assert results["pruning"]["prune_step"] == 20
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reference" / "ref" / "model",
                                                               trust_remote_code=True)
    assert model.config.num_hidden_layers == 3 and model.config.kept_layers == structure["layers_kept"]
    assert sorted(per_layer_structure(model)["intermediate_size_per_layer"])[0] == 0
    resumed = kill_and_resume(four_layers, sst2_slice, tmp_path / "killed", WHOLE_BERT, 29, 27, "retrain")
    same_run(reference, resumed)
    assert resumed[0]["pruning"]["structure"] == structure
    assert finished(tmp_path / "killed", "crash")[1].keys() == reference[1].keys()


@pytest.mark.parametrize("family", ["modernbert", "deberta-v3"])
def test_a_first_layer_built_unlike_the_others_is_never_removed(family):
    units = PrunableUnits(tiny(family), "heads+neurons", ("layer",))
    scores = {n: torch.full(g.shape, 10.0 if g.layer else 0.0) for n, g in units.groups.items()}  # layer 0 lowest
    masks = PruningConfig(granularity="heads+neurons", layer_rate=0.34).select(units, {**scores,
                                                                                      **units.whole_scores(scores)})
    assert masks[units.whole_group("layer").name].tolist() == [True, False, True]


# Every family: a 4-layer tiny model (test_families' run configs) whose early bird never comes (EB_EPSILON tiny), so
# it prunes at step 20 (one layer and one more MLP), retrains to step 40 and is killed at step 29.
WHOLE_EVERY_FAMILY = dict(WHOLE, eb_epsilon=1e-9, max_length=64)


@pytest.mark.parametrize("family", [f for f in RUN_CONFIGS if f != "bert"])  # BERT: the test above
def test_every_family_removes_whole_units_end_to_end_and_resumes_exactly(family, sst2_slice, tmp_path):
    config = dict(RUN_CONFIGS[family])
    config[BY_MODEL_TYPE[config["model_type"]].config_layers] = 4
    path = tmp_path / f"tiny-{family}-4.json"
    path.write_text(json.dumps(config))
    reference = reference_run(path, sst2_slice, tmp_path / "reference", WHOLE_EVERY_FAMILY)
    pruning = reference[0]["pruning"]
    assert pruning["prune_step"] == 20 and len(pruning["structure"]["layers_kept"]) == 3
    kept = pruning["structure"]
    assert set(kept["mlps_kept"]) <= set(kept["layers_kept"]) and len(kept["mlps_kept"]) in (2, 3)  # 1 MLP, maybe the layer's
    if family in ("deberta-v3", "modernbert"):
        assert 0 in kept["layers_kept"]  # built unlike the others: it stays
    resumed = kill_and_resume(path, sst2_slice, tmp_path / "killed", WHOLE_EVERY_FAMILY, 29, 27, "retrain")
    same_run(reference, resumed)
