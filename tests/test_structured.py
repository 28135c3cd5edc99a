"""Heads + FFN neurons: unit scores, surgery = gating, slimming, masks that never regrow, save/load."""
import logging

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification,
                          RobertaConfig, RobertaForSequenceClassification)

from gradient_pruning import GradientCriterion
from magnitude_pruning import MagnitudeCriterion
from pruning import PrunableUnits, PruningConfig
from pruning.core.masks import select
from pruning.core.surgery import UnitGates, remove_units
from pruning.run.schedule import PhasePlan
from slimming_pruning import SlimmingCriterion
from undecayed_pruning import UndecayedCriterion

HEADS, HEAD_SIZE, NEURONS = 4, 8, 16


def tiny(kind="bert", attn="eager", seed=0):
    torch.manual_seed(seed)
    common = dict(hidden_size=HEADS * HEAD_SIZE, num_hidden_layers=2, num_attention_heads=HEADS,
                  intermediate_size=NEURONS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "bert":
        model = BertForSequenceClassification(BertConfig(vocab_size=100, **common))
    else:
        model = RobertaForSequenceClassification(RobertaConfig(vocab_size=100, pad_token_id=1, type_vocab_size=1,
                                                               max_position_embeddings=40, **common))
    model.set_attn_implementation(attn)
    return model.eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding must not change anything either
    mask[3, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def logits(model, b):
    with torch.no_grad():
        return model(**{k: v for k, v in b.items() if k != "labels"}).logits


def some_masks(units):
    """Layer 0 keeps heads 1 and 3 and neurons 0..9; layer 1 keeps head 2 and every 3rd neuron."""
    heads = [torch.tensor([False, True, False, True]), torch.tensor([False, False, True, False])]
    neurons = [torch.arange(NEURONS) < 10, torch.arange(NEURONS) % 3 == 0]
    return {n: (heads if g.kind == "head" else neurons)[g.layer] for n, g in units.groups.items()}


def test_units_map_heads_and_neurons_to_their_rows_and_columns():
    units = PrunableUnits(tiny(), "heads+neurons")
    assert [g.kind for g in units.groups.values()] == ["head", "neuron", "head", "neuron"]
    heads = units.groups["bert.encoder.layer.0.heads"]
    assert heads.size == HEADS and [(s.module.split(".", 4)[-1], s.dim, s.width, s.output) for s in heads.slices] == [
        ("attention.self.query", 0, HEAD_SIZE, False), ("attention.self.key", 0, HEAD_SIZE, False),
        ("attention.self.value", 0, HEAD_SIZE, False), ("attention.output.dense", 1, HEAD_SIZE, True)]


def test_magnitude_unit_score_is_the_l2_norm_of_all_the_units_weights():
    model = tiny()
    units = PrunableUnits(model, "heads+neurons")
    scores = MagnitudeCriterion(units).scores()
    layer = model.bert.encoder.layer[1]
    a = layer.attention
    for h in range(HEADS):
        rows = slice(h * HEAD_SIZE, (h + 1) * HEAD_SIZE)
        expected = sum(float(w.detach().square().sum()) for w in (a.self.query.weight[rows], a.self.key.weight[rows],
                                                          a.self.value.weight[rows], a.output.dense.weight[:, rows]))
        assert float(scores["bert.encoder.layer.1.heads"][h]) == pytest.approx(expected ** 0.5, rel=1e-5)
    j = 5
    expected = float(layer.intermediate.dense.weight[j].detach().square().sum()
                     + layer.output.dense.weight[:, j].detach().square().sum())
    assert float(scores["bert.encoder.layer.1.neurons"][j]) == pytest.approx(expected ** 0.5, rel=1e-5)


@pytest.mark.parametrize("criterion,epsilon", [(GradientCriterion, None), (UndecayedCriterion, 0.0)])
def test_taylor_unit_score_is_the_gradient_of_a_gate_on_the_unit(criterion, epsilon):
    """Michel et al.'s head importance |dL/d gate| (and its FFN-neuron twin), from autograd, equals the
    score the criterion computes from the weights' gradients; summed over steps after abs."""
    model = tiny().train()
    units = PrunableUnits(model, "heads+neurons")
    crit = criterion(units) if epsilon is None else criterion(units, epsilon=epsilon)
    gates = {n: torch.ones(g.size, requires_grad=True) for n, g in units.groups.items()}
    hooks = UnitGates(units, gates)
    expected = {n: torch.zeros(g.size) for n, g in units.groups.items()}
    for seed in (1, 2):
        model.zero_grad()
        for g in gates.values():
            g.grad = None
        model(**batch(seed)).loss.backward()
        crit.observe()
        for n, g in gates.items():
            expected[n] += g.grad.abs()
    hooks.remove()
    for n, value in crit.scores().items():
        assert torch.allclose(value, expected[n], rtol=1e-4, atol=1e-7), n


def test_undecayed_unit_score_adds_epsilon_w_squared_inside_the_sum():
    model = tiny().train()
    units = PrunableUnits(model, "heads+neurons")
    crit = UndecayedCriterion(units, epsilon=0.5)
    model(**batch()).loss.backward()
    crit.observe()
    out = model.bert.encoder.layer[0].output.dense.weight
    j = 3
    w = out.detach()
    expected = abs(float((-w[:, j] * out.grad[:, j] + 0.5 * w[:, j] ** 2).sum()))
    assert float(crit.scores()["bert.encoder.layer.0.neurons"][j]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_removing_units_equals_gating_them_to_zero(kind, attn):
    model = tiny(kind, attn)
    units = PrunableUnits(model, "heads+neurons")
    keep = some_masks(units)
    hooks = UnitGates(units, {n: m.float() for n, m in keep.items()})
    gated = logits(model, batch())
    hooks.remove()
    dense = logits(model, batch())
    removed = remove_units(units, keep)
    assert removed == {n: int((~m).sum()) for n, m in keep.items()}
    pruned = logits(model, batch())
    assert not torch.allclose(dense, gated, atol=1e-4)   # the units mattered ...
    torch.testing.assert_close(pruned, gated, rtol=1e-5, atol=1e-6)  # ... and surgery removes exactly them
    layer0 = model.base_model.encoder.layer[0]
    assert layer0.attention.self.query.weight.shape == (2 * HEAD_SIZE, HEADS * HEAD_SIZE)
    assert layer0.attention.output.dense.weight.shape == (HEADS * HEAD_SIZE, 2 * HEAD_SIZE)
    assert layer0.intermediate.dense.weight.shape == (10, HEADS * HEAD_SIZE)
    assert layer0.attention.self.num_attention_heads == 2


def test_surgery_slices_the_optimizer_state_of_the_kept_units():
    model = tiny().train()
    units = PrunableUnits(model, "heads+neurons")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**batch()).loss.backward()
    optimizer.step()
    query = model.bert.encoder.layer[0].attention.self.query
    before = optimizer.state[query.weight]["exp_avg"].clone()
    remove_units(units, some_masks(units), optimizer)
    after = optimizer.state[query.weight]["exp_avg"]
    assert torch.equal(after, torch.cat([before[HEAD_SIZE:2 * HEAD_SIZE], before[3 * HEAD_SIZE:]]))
    model.zero_grad()
    model(**batch()).loss.backward()
    optimizer.step()  # the sliced state fits the smaller tensors


def test_masks_never_regrow_and_removed_units_stay_removed():
    model = tiny()
    units = PrunableUnits(model, "heads+neurons")
    remove_units(units, some_masks(units))
    # A later update that would keep everything cannot bring removed units back ...
    scores = units.to_original(MagnitudeCriterion(units).scores(), fill=float("-inf"))
    config = PruningConfig(granularity="heads+neurons", head_rate=0.5, neuron_rate=0.4)
    masks = config.select(units, scores, current=some_masks(units))
    for name, g in units.groups.items():
        removed = ~some_masks(units)[name]
        assert not bool(masks[name][removed].any()), name
        if g.kind == "head":  # layer 0 kept 2 heads (rate 0.5 allows 2): both stay; layer 1 kept only 1
            assert int(masks[name].sum()) == (2 if g.layer == 0 else 1)
    # ... and a second removal shrinks further, in original index space.
    remove_units(units, masks)
    assert all(torch.equal(torch.tensor(g.origin.tolist()), masks[n].nonzero().squeeze(1)) for n, g in units.groups.items())


def test_at_least_one_head_stays_and_a_rate_that_would_remove_all_is_refused():
    scores = {"l0": torch.tensor([1.0, 2.0, 3.0, 4.0]), "l1": torch.tensor([4.0, 3.0, 2.0, 1.0])}
    masks = select(scores, (0.75, 0.5), "layerwise", min_keep=1, layers={"l0": 0, "l1": 1})
    assert masks["l0"].tolist() == [False, False, False, True] and masks["l1"].tolist() == [True, True, False, False]
    units = PrunableUnits(tiny(), "heads+neurons")
    with pytest.raises(ValueError, match="would remove all 4 heads of layer 0"):
        PruningConfig(granularity="heads+neurons", head_rate=0.9).check_model(units)
    with pytest.raises(ValueError, match="3 per-layer head rates given, but the model has 2"):
        PruningConfig(granularity="heads+neurons", head_rate=(0.25, 0.25, 0.25)).check_model(units)


def test_global_neuron_rate_keeps_one_neuron_in_every_layer():
    scores = {"l0": torch.zeros(10), "l1": torch.arange(1.0, 11.0)}   # a global threshold would empty l0
    masks = select(scores, 0.6, "global", min_keep=1, layers={"l0": 0, "l1": 1})
    assert int(masks["l0"].sum()) == 1 and sum(int((~m).sum()) for m in masks.values()) == 12


def test_slimming_folds_its_coefficients_into_the_weights_exactly():
    model = tiny()
    units = PrunableUnits(model, "heads+neurons")
    crit = SlimmingCriterion(units, l1=1e-4)
    with torch.no_grad():
        for c in crit.coefficients.values():
            c.uniform_(0.2, 1.5)
    keep = some_masks(units)
    with torch.no_grad():  # the gated model with the pruned units' coefficients at zero
        saved = {n: c.clone() for n, c in crit.coefficients.items()}
        for n, c in crit.coefficients.items():
            c.mul_(keep[n])
        gated = logits(model, batch())
        for n, c in crit.coefficients.items():
            c.copy_(saved[n])
    crit.before_removal(keep)
    crit.close()
    remove_units(units, keep)
    torch.testing.assert_close(logits(model, batch()), gated, rtol=1e-5, atol=1e-6)
    assert not any("coefficient" in k for k in model.state_dict())  # nothing leaks into the saved model
    assert crit.gates.handles == [] and not model.bert.encoder.layer[0].intermediate._forward_hooks


def test_slimming_adds_the_l1_subgradient_and_clears_its_gradients():
    model = tiny().train()
    crit = SlimmingCriterion(PrunableUnits(model, "heads+neurons"), l1=0.5)
    model(**batch()).loss.backward()
    c = crit.coefficients["bert.encoder.layer.0.heads"]
    raw = c.grad.clone()
    crit.on_gradients()
    assert torch.allclose(c.grad, raw + 0.5)  # c = 1 > 0: sign +1
    crit.after_step()
    assert c.grad is None
    with pytest.raises(ValueError, match="needs GRANULARITY='heads\\+neurons'"):
        SlimmingCriterion(PrunableUnits(tiny(), "weights"))


def test_weights_granularity_scores_are_unchanged_by_the_unit_view():
    model = tiny()
    units = PrunableUnits(model, "weights")
    w = model.bert.encoder.layer[0].output.dense.weight
    assert torch.equal(MagnitudeCriterion(units).scores()["bert.encoder.layer.0.output.dense.weight"], w.abs())


def test_phase_plan_and_learning_rate_policy():
    plan = PhasePlan.of(total_steps=40, epochs=2.0, search_epochs=1.0, retrain_epochs=1.0, warmup_steps=4,
                        skip_warmup=True)
    assert (plan.search_steps, plan.retrain_steps, plan.first_check_after) == (20, 20, 4)
    assert [s for s in range(1, 21) if plan.check_due(s, 5)] == [5, 10, 15, 20]
    assert plan.lr_factor(2, None, None) == 0.5 and plan.lr_factor(22, None, None) == pytest.approx(18 / 36)
    # pruned at step 10, retraining to step 30: decays linearly from the step-10 value to zero at 30
    at_prune = plan.lr_factor(10, None, None)
    assert plan.lr_factor(20, 10, 30) == pytest.approx(at_prune / 2) and plan.lr_factor(30, 10, 30) == 0.0


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_saved_structured_model_loads_in_one_call_with_identical_logits(kind, tmp_path, caplog):
    from pruning.core.pruned_model import as_pruned_model
    model = tiny(kind, "sdpa")
    units = PrunableUnits(model, "heads+neurons")
    remove_units(units, some_masks(units))
    before = logits(model, batch())
    as_pruned_model(model, [g.origin.tolist() for g in units.groups.values() if g.kind == "head"])
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert torch.equal(logits(loaded, batch()), before)
    assert loaded.config.kept_heads == [[1, 3], [2]] and loaded.config.intermediate_size_per_layer == [10, 6]
    with pytest.raises(RuntimeError, match="mismatched"):  # the stock class refuses the smaller weights
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_speed_probe_restores_the_model_exactly_and_works_on_a_few_rows():
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tok_models
    from pruning.run.measurements import measure_speed
    model = tiny().train()
    units = PrunableUnits(model, "heads+neurons")
    remove_units(units, some_masks(units))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel({"[PAD]": 0, "[UNK]": 1}, "[UNK]")),
                                  pad_token="[PAD]")
    rows = [{"input_ids": list(range(3, 3 + n)), "attention_mask": [1] * n, "label": n % 2} for n in range(4, 14)]
    speed = measure_speed(model, rows, rows[:7], DataCollatorWithPadding(tok), rounds=1, batch1_sentences=3)
    assert speed["batch64_pruned"] > 0 and speed["batch1_dense"] > 0 and speed["train_step_speedup"] > 0
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
