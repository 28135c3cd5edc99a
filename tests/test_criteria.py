"""Each criterion's scores against hand-computed values, and exact-count masks."""
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from gradient_pruning import GradientCriterion
from magnitude_pruning import MagnitudeCriterion
from pruning import PrunableUnits, keep_masks, prunable_parameters
from undecayed_pruning import UndecayedCriterion

W = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
G1 = torch.tensor([[0.5, 0.5], [-4.0, 1.0]])
G2 = torch.tensor([[-1.0, 0.25], [2.0, 0.0]])


def layer_with(w):
    layer = nn.Linear(2, 2, bias=False)
    layer.weight.data.copy_(w)
    return PrunableUnits.of_parameters({"layer.weight": layer.weight})


def feed(criterion, units, grads):
    for g in grads:
        units.params["layer.weight"].grad = g.clone()
        criterion.observe()


def test_magnitude_is_abs_weight():
    params = layer_with(W)
    assert torch.equal(MagnitudeCriterion(params).scores()["layer.weight"], torch.tensor([[1.0, 2.0], [0.5, 3.0]]))


def test_gradient_is_abs_w_times_g_summed_over_steps_since_last_check():
    params = layer_with(W)
    crit = GradientCriterion(params)
    feed(crit, params, [G1, G2])
    # |w*g1| = [[.5, 1], [2, 3]], |w*g2| = [[1, .5], [1, 0]]
    assert torch.equal(crit.scores()["layer.weight"], torch.tensor([[1.5, 1.5], [3.0, 3.0]]))
    crit.reset()
    with pytest.raises(RuntimeError, match="at least one optimizer step"):
        crit.scores()
    feed(crit, params, [G2])
    assert torch.equal(crit.scores()["layer.weight"], torch.tensor([[1.0, 0.5], [1.0, 0.0]]))


def test_undecayed_is_abs_of_minus_wg_plus_eps_w_squared():
    params = layer_with(W)
    crit = UndecayedCriterion(params, epsilon=0.5)
    feed(crit, params, [G1])
    # -w*g + 0.5*w^2: [[-0.5 + 0.5, 1 + 2], [2 + 0.125, -3 + 4.5]]
    assert torch.allclose(crit.scores()["layer.weight"], torch.tensor([[0.0, 3.0], [2.125, 1.5]]))
    crit2 = UndecayedCriterion(layer_with(W), epsilon=0.0)
    feed(crit2, crit2.units, [G1])
    assert torch.allclose(crit2.scores()["layer.weight"], (W * G1).abs())  # epsilon 0 is the gradient score


def test_accumulated_state_round_trip():
    params = layer_with(W)
    a = GradientCriterion(params)
    feed(a, params, [G1])
    b = GradientCriterion(params)
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    feed(a, params, [G2])
    feed(b, params, [G2])
    assert torch.equal(a.scores()["layer.weight"], b.scores()["layer.weight"]) and b.steps == 2


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.7, 0.9, 0.999])
def test_global_mask_prunes_exactly_round_rate_times_n(rate):
    torch.manual_seed(0)
    scores = {"a": torch.rand(33, 17), "b": torch.rand(100), "c": torch.rand(7, 7)}
    n = sum(s.numel() for s in scores.values())
    masks = keep_masks(scores, rate)
    assert sum(int((~m).sum()) for m in masks.values()) == round(rate * n)
    # Everything pruned scores no higher than anything kept.
    flat_s = torch.cat([s.flatten() for s in scores.values()])
    flat_m = torch.cat([m.flatten() for m in masks.values()])
    if 0 < rate:
        assert flat_s[~flat_m].max() <= flat_s[flat_m].min()


def test_ties_at_the_threshold_still_give_the_exact_count():
    scores = {"a": torch.zeros(10), "b": torch.ones(10)}   # 20 scores, two values
    masks = keep_masks(scores, 0.25)                        # prune 5 of the 10 tied zeros
    assert int((~masks["a"]).sum()) == 5 and bool(masks["b"].all())
    assert torch.equal(~masks["a"], torch.tensor([True] * 5 + [False] * 5))  # deterministic: first ones


def test_layerwise_prunes_the_rate_inside_each_tensor():
    torch.manual_seed(1)
    scores = {"a": torch.rand(40) * 100, "b": torch.rand(60)}   # a global threshold would prune only b
    masks = keep_masks(scores, 0.5, scope="layerwise")
    assert int((~masks["a"]).sum()) == 20 and int((~masks["b"]).sum()) == 30
    glob = keep_masks(scores, 0.5)
    assert bool(glob["a"].all()) and int((~glob["b"]).sum()) == 50


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rate_outside_unit_interval_is_rejected(rate):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        keep_masks({"a": torch.rand(4)}, rate)


def test_non_finite_scores_are_an_error():
    with pytest.raises(FloatingPointError, match="diverged: non-finite"):
        keep_masks({"a": torch.tensor([1.0, float("nan")])}, 0.5)


@pytest.mark.parametrize("cls,config", [
    (BertForSequenceClassification, BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=32, vocab_size=100)),
    (RobertaForSequenceClassification, RobertaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=32, vocab_size=100)),
])
def test_prunable_set_is_the_encoder_linears_only(cls, config):
    names = sorted(prunable_parameters(cls(config)))
    per_layer = ["attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value",
                 "intermediate.dense", "output.dense"]
    prefix = cls.base_model_prefix
    assert names == sorted(f"{prefix}.encoder.layer.{i}.{p}.weight" for i in range(2) for p in per_layer)


@pytest.mark.parametrize("kind", ["uniform", "ties", "heavy-tail"])
def test_fast_kth_smallest_is_exactly_kthvalue(kind):
    from pruning import kth_smallest
    g = torch.Generator().manual_seed(3)
    n = 1_000_003
    x = {"uniform": torch.rand(n, generator=g),
         "ties": torch.randint(0, 50, (n,), generator=g).float(),
         "heavy-tail": torch.randn(n, generator=g).exp() ** 4}[kind]
    for k in (1, 17, n // 10, n // 2, n - 5, n):
        assert kth_smallest(x, k, sample_size=20_000) == x.kthvalue(k).values, k


def test_per_layer_rates_prune_exactly_that_rate_in_each_layer():
    torch.manual_seed(2)
    names = [f"bert.encoder.layer.{i}.{t}.weight" for i in range(2) for t in ("q", "o")]
    scores = {n: torch.rand(10, 10) * (100 if ".0." in n else 1) for n in names}  # a global threshold spares layer 0
    masks = keep_masks(scores, (0.25, 0.5))
    pruned = {i: sum(int((~m).sum()) for n, m in masks.items() if f".{i}." in n) for i in range(2)}
    assert pruned == {0: 50, 1: 100}
    with pytest.raises(ValueError, match="3 per-layer rates given"):
        keep_masks(scores, (0.1, 0.2, 0.3))
