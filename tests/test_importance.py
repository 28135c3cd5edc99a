"""The to-fraction search (Prasanna et al. 2020) on a tiny model: head and MLP gates, Michel et al.'s importance,
each iteration's step, the stopping rule on a hand-made score curve, resuming after a kill; iterative magnitude
pruning; to-fraction tickets (whole MLPs) with random and bad masks and the trainer's MASK_FROM."""
import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pruning.core.surgery import remove_units
from pruning.core.units import PrunableUnits
from pruning.run import checkpoint as state_io
from pruning.run.checkpoint import read_masks
from pruning.run.pruning_config import PruningConfig
from pruning.run.trainer import whole_kinds
from pruning.studies import tickets, to_fraction

PREFIX = "bert.encoder.layer"


def tiny(layers=3, heads=4, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=12, max_position_embeddings=32, num_labels=2,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, attn_implementation="eager")
    return BertForSequenceClassification(config).eval()


def batches(n=3, size=4, length=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(5, 50, (size, length), generator=g),
             "attention_mask": torch.ones(size, length, dtype=torch.long),
             "labels": torch.randint(0, 2, (size,), generator=g)} for _ in range(n)]


def logits(model, batch, **kw):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}, **kw).logits


def test_the_mask_has_the_contract_groups():
    masks = to_fraction.full_structured_mask(tiny())
    assert list(masks) == [f"{PREFIX}.{i}.{k}" for i in range(3) for k in ("heads", "neurons")] + [f"{PREFIX}.mlps"]
    assert masks[f"{PREFIX}.0.heads"].shape == (4,) and masks[f"{PREFIX}.0.neurons"].shape == (12,)
    assert masks[f"{PREFIX}.mlps"].shape == (3,) and all(bool(m.all()) for m in masks.values())


def test_gates_at_zero_remove_a_head_and_a_whole_mlp_bias_included():
    model, batch = tiny(), batches(1)[0]
    masks = to_fraction.full_structured_mask(model)
    masks[f"{PREFIX}.1.heads"] = torch.tensor([True, False, True, True])
    masks[f"{PREFIX}.mlps"] = torch.tensor([False, True, True])
    with to_fraction.StructuredGates(model, masks):
        gated = logits(model, batch)
    assert not torch.allclose(gated, logits(model, batch))  # the gates act
    reference = tiny()
    with torch.no_grad():
        layers = reference.bert.encoder.layer
        layers[1].attention.output.dense.weight[:, 4:8] = 0     # head 1 of layer 1 (head size 4)
        layers[0].output.dense.weight.zero_()
        layers[0].output.dense.bias.zero_()                      # the MLP's whole output, bias included
    assert torch.allclose(gated, logits(reference, batch), atol=1e-6)
    assert torch.equal(logits(model, batch), logits(tiny(), batch))  # the hooks are off after the context


def test_head_importance_is_the_gate_gradient_that_the_gradient_criterion_reads_off_the_weights():
    model, data = tiny(), batches(2)
    masks = to_fraction.full_structured_mask(model)
    scores = to_fraction.gate_importance(model, data, masks, normalize_heads=False)
    dense = model.bert.encoder.layer[2].attention.output.dense
    total = torch.zeros(4)
    for batch in data:  # Michel et al.: dL/dxi_h = sum over head h's output-projection weights of w * dL/dw
        model.zero_grad()
        model(**batch).loss.backward()
        total += (dense.weight * dense.weight.grad).detach().view(16, 4, 4).sum((0, 2))
    assert torch.allclose(scores[f"{PREFIX}.2.heads"], total.abs(), rtol=1e-4, atol=1e-7)
    normalized = to_fraction.gate_importance(model, data, masks)
    assert torch.allclose(normalized[f"{PREFIX}.2.heads"].norm(), torch.tensor(1.0))
    masks[f"{PREFIX}.0.heads"][3] = False
    masks[f"{PREFIX}.mlps"][1] = False
    removed = to_fraction.gate_importance(model, data, masks)
    assert removed[f"{PREFIX}.0.heads"][3] == float("-inf") and removed[f"{PREFIX}.mlps"][1] == float("-inf")
    assert torch.isfinite(removed[f"{PREFIX}.mlps"][[0, 2]]).all()


def test_one_step_removes_its_share_of_the_remaining_heads_keeps_a_head_per_layer_and_mlp_step_mlps():
    masks = to_fraction.full_structured_mask(tiny())
    scores = {n: torch.arange(m.numel(), dtype=torch.float) + 10 * i
              for i, (n, m) in enumerate(masks.items()) if not n.endswith(".neurons")}
    scores[f"{PREFIX}.0.heads"] = torch.tensor([0.1, 0.2, 0.3, 0.05])   # layer 0 holds the 4 lowest heads
    scores[f"{PREFIX}.mlps"] = torch.tensor([5.0, 1.0, 3.0])
    out = to_fraction.structured_step(masks, scores, step=0.4, mlp_step=2)  # round(0.4 * 12) = 5 heads
    assert out[f"{PREFIX}.0.heads"].tolist() == [False, False, True, False]   # 3 of layer 0: it keeps its best
    assert to_fraction.counts(out) == {"heads": 7, "heads_total": 12, "mlps": 1, "mlps_total": 3}
    assert out[f"{PREFIX}.mlps"].tolist() == [True, False, False]
    assert not out[f"{PREFIX}.1.neurons"].any() and out[f"{PREFIX}.0.neurons"].all()
    assert to_fraction.heads_to_remove(3, 0.1) == 1 and to_fraction.heads_to_remove(144, 0.1) == 14


def curve_score(masks):
    """A hand-made score: the fraction of heads kept, less 0.02 per MLP removed."""
    c = to_fraction.counts(masks)
    return c["heads"] / c["heads_total"] - 0.02 * (c["mlps_total"] - c["mlps"])


def structured_search(model, state_dir, evaluate, data):
    initial = to_fraction.full_structured_mask(model)
    return to_fraction.to_fraction_search(
        initial, lambda m: to_fraction.gate_importance(model, data, m), evaluate,
        lambda m, s: to_fraction.structured_step(m, s, 0.1, 1), 0.8, state_dir, {"step": 0.1, "mlp_step": 1})


def test_the_search_stops_at_the_last_mask_that_keeps_the_fraction(tmp_path):
    model, data = tiny(layers=3, heads=4), batches()
    seen = []

    def evaluate(masks):
        seen.append({n: m.clone() for n, m in masks.items()})
        return curve_score(masks)
    result = structured_search(model, tmp_path, evaluate, data)
    heads = [p["heads"] for p in result.curve]
    mlps = [p["mlps"] for p in result.curve]
    assert heads[0] == 12 and mlps[0] == 3
    for before, after in zip(heads, heads[1:]):   # exactly its step of the remaining heads, every iteration
        assert before - after == to_fraction.heads_to_remove(before, 0.1)
    assert mlps == [3, 2, 1][:len(mlps)]
    # 12 heads 3 MLPs: 1.0; 11, 2: 0.897; 10, 1: 0.793 < 0.8 -> the ticket is iteration 1
    assert [round(p["score"], 3) for p in result.curve] == [1.0, 0.897, 0.793]
    assert [p["meets"] for p in result.curve] == [True, True, False]
    assert result.ticket_iteration == 1
    assert all(torch.equal(result.ticket[n], seen[1][n]) for n in seen[1])
    assert to_fraction.counts(result.ticket)["heads"] == 11
    saved = json.loads((tmp_path / to_fraction.CURVE_FILE).read_text())
    assert saved["ticket_iteration"] == 1 and saved["done"] and len(saved["curve"]) == 3
    # the removal order: the first head removed has the lowest rank among heads, and survivors rank last
    order = result.order
    first = [(n, i) for n in to_fraction.head_names(seen[0]) for i in range(4) if seen[0][n][i] and not seen[1][n][i]]
    assert len(first) == 1
    removed_ranks = [float(order[n][i]) for n in to_fraction.head_names(seen[0]) for i in range(4)
                     if not result.final[n][i]]
    kept_ranks = [float(order[n][i]) for n in to_fraction.head_names(seen[0]) for i in range(4) if result.final[n][i]]
    assert max(removed_ranks) < min(kept_ranks) and float(order[first[0][0]][first[0][1]]) == min(removed_ranks)


@pytest.mark.parametrize("killed_after", [0, 1])
def test_a_killed_search_resumes_to_the_same_result(tmp_path, killed_after):
    model, data = tiny(layers=4, heads=4), batches()

    def slow_curve(masks):  # more iterations: 0.95 per 10% of heads
        c = to_fraction.counts(masks)
        return 1.0 - 0.5 * (1 - c["heads"] / c["heads_total"]) - 0.01 * (c["mlps_total"] - c["mlps"])
    whole = structured_search(model, tmp_path / "whole", slow_curve, data)
    calls = []

    def dies(masks):
        if len(calls) == killed_after + 1:  # the full model's evaluation is call 0
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return slow_curve(masks)
    with pytest.raises(KeyboardInterrupt):
        structured_search(model, tmp_path / "killed", dies, data)
    state = state_io.read(str(tmp_path / "killed" / to_fraction.STATE_FILE))[1]
    assert state["iteration"] == killed_after and not state["done"]
    resumed = structured_search(model, tmp_path / "killed", slow_curve, data)
    assert resumed.curve == whole.curve and resumed.ticket_iteration == whole.ticket_iteration > 1
    assert all(torch.equal(resumed.ticket[n], whole.ticket[n]) for n in whole.ticket)
    assert all(torch.equal(resumed.order[n], whole.order[n]) for n in whole.order)
    again = structured_search(model, tmp_path / "killed", lambda m: pytest.fail("a finished search evaluated"), data)
    assert again.curve == whole.curve
    with pytest.raises(ValueError, match="other settings"):
        to_fraction.to_fraction_search(to_fraction.full_structured_mask(model), None, None, None, 0.7,
                                      tmp_path / "killed", {"step": 0.1, "mlp_step": 1})


def test_iterative_magnitude_pruning_removes_ten_percent_of_the_remaining_weights_each_time(tmp_path):
    model = tiny()
    from pruning.core.units import prunable_parameters
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model).items()}
    total = sum(m.numel() for m in masks.values())
    result = to_fraction.to_fraction_search(
        masks, lambda m: to_fraction.magnitude_importance(model, m), lambda m: to_fraction.counts(m)["weights"] / total,
        lambda m, s: to_fraction.weights_step(m, s, 0.1), 0.75, tmp_path, {"granularity": "weights"})
    kept = [p["weights"] for p in result.curve]
    for before, after in zip(kept, kept[1:]):
        assert before - after == max(1, round(0.1 * before))
    assert result.curve[-1]["score"] < 0.75 <= result.curve[-2]["score"]
    assert result.ticket_iteration == len(kept) - 2
    # global magnitude: every removed weight is no larger than every kept one
    params = prunable_parameters(model)
    removed = torch.cat([params[n].detach().abs()[~result.ticket[n]] for n in params])
    survived = torch.cat([params[n].detach().abs()[result.ticket[n]] for n in params])
    assert removed.max() <= survived.min()
    with to_fraction.masked_weights(model, result.ticket):
        assert all(int((params[n] == 0).sum()) >= int((~result.ticket[n]).sum()) for n in params)
    assert all(int((params[n] != 0).sum()) == params[n].numel() for n in params)  # restored


def test_a_full_score_at_or_below_zero_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no threshold"):
        to_fraction.to_fraction_search({"a": torch.ones(3, dtype=torch.bool)}, None, lambda m: 0.0, None, 0.9, tmp_path, {})


def mlp_ticket():
    good = to_fraction.full_structured_mask(tiny(layers=4, heads=4))
    good[f"{PREFIX}.mlps"] = torch.tensor([True, False, True, False])
    good = to_fraction.with_neurons_following_mlps(good)
    good[f"{PREFIX}.0.heads"] = torch.tensor([True, False, False, True])
    good[f"{PREFIX}.2.heads"] = torch.tensor([False, False, True, False])
    return good


@pytest.mark.parametrize("seed", range(5))
def test_random_and_bad_mlp_tickets_keep_the_good_tickets_heads_and_mlps_in_every_layer(seed):
    good = mlp_ticket()
    scores = {n: torch.rand(m.shape, generator=torch.Generator().manual_seed(seed)) for n, m in good.items()}
    for mask in (tickets.random_mask(good, seed), tickets.bad_mask(good, scores)):
        assert {n: int(m.sum()) for n, m in mask.items()} == {n: int(m.sum()) for n, m in good.items()}
        assert torch.equal(mask[f"{PREFIX}.mlps"], good[f"{PREFIX}.mlps"])   # one MLP a layer: the same ones
        for i in range(4):  # neurons follow the layer's MLP
            assert bool(mask[f"{PREFIX}.{i}.neurons"].all()) == bool(mask[f"{PREFIX}.mlps"][i])
            assert not mask[f"{PREFIX}.{i}.neurons"].any() or mask[f"{PREFIX}.{i}.neurons"].all()
    bad = tickets.bad_mask(good, scores)
    heads0 = scores[f"{PREFIX}.0.heads"]
    assert bad[f"{PREFIX}.0.heads"].tolist() == [bool(i in heads0.argsort()[:2].tolist()) for i in range(4)]


def write_ticket(directory, masks, model):
    meta = {"granularity": "heads+neurons", "criterion": "to_fraction", "model": "tiny",
            "groups": {n: list(m.shape) for n, m in masks.items()}}
    state_io.write(str(directory / state_io.MASKS_FILE), state_io.pack_masks(masks, "keep/"), meta)
    return directory


def test_mask_from_takes_heads_only_and_mlp_tickets(tmp_path):
    model = tiny(layers=4, heads=4)
    heads_only = to_fraction.full_structured_mask(model)
    heads_only[f"{PREFIX}.1.heads"] = torch.tensor([False, True, True, False])
    source = str(write_ticket(tmp_path / "heads", heads_only, model))
    units = PrunableUnits(model, "heads+neurons", whole_kinds(PruningConfig(granularity="heads+neurons",
                                                                            mask_from=source)))
    read = read_masks(source, units)
    assert list(read) == list(units.mask_groups) and torch.equal(read[f"{PREFIX}.1.heads"], heads_only[f"{PREFIX}.1.heads"])
    mlps = str(write_ticket(tmp_path / "mlps", mlp_ticket(), model))
    config = PruningConfig(granularity="heads+neurons", mask_from=mlps)
    assert whole_kinds(config) == ("mlp",)
    units = PrunableUnits(tiny(layers=4, heads=4), "heads+neurons", whole_kinds(config))
    read = read_masks(mlps, units)
    assert read[f"{PREFIX}.mlps"].tolist() == [True, False, True, False]
    remove_units(units, read)
    assert [len(units.groups[f"{PREFIX}.{i}.neurons"].origin) > 0 for i in range(4)] == [True, False, True, False]
