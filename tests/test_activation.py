"""The activation criterion against hand-computed scores, its hooks, early stopping and the cost series."""
import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from activation_pruning import ActivationCriterion
from conftest import TINY, only_run_dir, run_script, tiny_args
from pruning import PrunableUnits
from pruning.run.callbacks import EarlyStopping, stopping_evaluation
from pruning.run.run_state import RunState
from pruning.run.training_cost import active_parameters

BATCH = {"input_ids": torch.tensor([[101, 2023, 2003, 1037, 102], [101, 2204, 102, 0, 0]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
REAL_TOKENS = 8


def tiny_model():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, **TINY)
    return BertForSequenceClassification(config).train()


def one_counted_step(criterion, model, batch=BATCH):
    model(**batch)
    criterion.observe()
    criterion.after_step()


def test_neuron_and_head_scores_are_the_hand_computed_activations():
    model = tiny_model()
    layer = model.bert.encoder.layer[0]
    bias = torch.linspace(-2, 2, 64)
    with torch.no_grad():  # every token's FFN activation is GELU(bias); every head's context is its V bias
        layer.intermediate.dense.weight.zero_()
        layer.intermediate.dense.bias.copy_(bias)
        layer.attention.self.value.weight.zero_()
        layer.attention.self.value.bias.copy_(torch.arange(32.0))
    for statistic, expected in (("mean_abs", torch.nn.functional.gelu(bias).abs()), ("apoz", (bias > 0).float())):
        units = PrunableUnits(model, "heads+neurons")
        criterion = ActivationCriterion(units, statistic)
        one_counted_step(criterion, model)
        one_counted_step(criterion, model)
        scores = criterion.scores()
        assert criterion.tokens == 2 * REAL_TOKENS
        torch.testing.assert_close(scores["bert.encoder.layer.0.neurons"], expected)
        heads = torch.stack([torch.arange(16.0).norm(), torch.arange(16.0, 32.0).norm()])
        torch.testing.assert_close(scores["bert.encoder.layer.0.heads"], heads)
        criterion.close()


def test_weight_scores_are_wanda_over_real_tokens_only():
    """|w_ij| * RMS over real tokens of input feature j: padding positions change nothing."""
    model = tiny_model()
    seen = []
    query = model.bert.encoder.layer[1].attention.self.query
    handle = query.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    criterion = ActivationCriterion(PrunableUnits(model, "weights"))
    one_counted_step(criterion, model)
    handle.remove()
    x = seen[0][BATCH["attention_mask"].bool()]                   # (real tokens, features)
    expected = query.weight.detach().abs() * x.square().mean(0).sqrt()
    torch.testing.assert_close(criterion.scores()["bert.encoder.layer.1.attention.self.query.weight"], expected)
    criterion.close()


def test_only_counted_training_steps_are_scored_and_hooks_leave_no_trace():
    model = tiny_model()
    keys = set(model.state_dict())
    units = PrunableUnits(model, "heads+neurons")
    criterion = ActivationCriterion(units)
    model(**BATCH)
    criterion.after_step()                 # a warm-up step: observed by the hooks, not counted
    model.eval()
    model(**BATCH)                         # an evaluation forward: not observed at all
    criterion.observe()
    assert criterion.tokens == 0 and all(bool((s == 0).all()) for s in criterion.sums.values())
    with pytest.raises(RuntimeError, match="at least one counted training step"):
        criterion.scores()
    model.train()
    one_counted_step(criterion, model)
    state = {k: v.clone() for k, v in criterion.state_dict().items()}
    criterion.reset()
    criterion.load_state_dict(state)
    assert criterion.tokens == REAL_TOKENS
    criterion.close()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert set(model.state_dict()) == keys
    before = {k: v.clone() for k, v in criterion.sums.items()}
    model(**BATCH)                         # closed: nothing more is gathered
    criterion.observe()
    assert all(torch.equal(before[k], criterion.sums[k]) for k in before)


def test_bad_statistic_is_refused():
    with pytest.raises(ValueError, match="mean_abs, apoz"):
        ActivationCriterion.check_options("median")


@pytest.mark.parametrize("losses,patience,threshold,stop", [
    ([1.0, 0.9, 0.95, 0.92, 0.91, 0.5], 3, 0.0, 4),   # best 0.9 at index 1; three evaluations without a lower loss
    ([1.0, 0.9, 0.95, 0.85, 0.91, 0.92], 3, 0.0, None),  # 0.85 resets the count
    ([1.0, 0.9, 0.89, 0.88, 0.87], 2, 0.05, 3),        # improvements of 0.01 are not above the threshold
    ([0.5, 0.6], 1, 0.0, 1),
    ([], 2, 0.0, None),
])
def test_stopping_evaluation_on_hand_built_loss_sequences(losses, patience, threshold, stop):
    assert stopping_evaluation(losses, patience, threshold) == stop


def test_early_stopping_of_a_pruning_run_watches_the_retrain_phase_only():
    class Control:
        should_training_stop = False
    run = RunState()
    stopper = EarlyStopping(patience=2, run=run)
    stopper.on_train_begin(None, None, None)
    state = type("State", (), {})()
    state.log_history = [{"step": s, "eval_loss": loss} for s, loss in ((10, 0.3), (20, 0.4), (30, 0.5))]
    control = Control()
    stopper.on_evaluate(None, state, control)          # the dense search's losses rise: not watched
    assert not control.should_training_stop
    run.prune_step = 30
    run.enter("retrain")
    state.log_history += [{"step": 30, "eval_loss": 0.9}, {"step": 40, "eval_loss": 0.8}, {"step": 50, "eval_loss": 0.85}]
    stopper.on_evaluate(None, state, control)          # the two evaluations at pruning do not count
    assert not control.should_training_stop
    state.log_history.append({"step": 60, "eval_loss": 0.81})
    stopper.on_evaluate(None, state, control)
    assert control.should_training_stop and stopper.stop["step"] == 60 and stopper.stop["best_step"] == 40


def test_active_parameters_count_masked_zeros_not_zero_biases():
    model = tiny_model()
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.bias.zero_()  # a zero bias is still a parameter
    total = sum(p.numel() for p in model.parameters())
    embeddings = sum(p.numel() for p in model.bert.embeddings.parameters())
    assert active_parameters(model) == (total, total - embeddings)
    assert active_parameters(model, 100) == (total - 100, total - embeddings - 100)


@pytest.mark.parametrize("granularity", ["weights", "heads+neurons"])
def test_a_run_logs_cost_that_adds_up(granularity, tiny_bert_config, sst2_slice, tmp_path):
    """Active parameters fall at pruning by exactly what was pruned; FLOPs are 3 x tokens x per-token cost."""
    args = tiny_args(tiny_bert_config, sst2_slice, tmp_path, trainer="activation", granularity=granularity,
                     eval_every=4, early_stopping_patience=2)
    proc = run_script("bert.py", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    series, p = res["cost_series"], res["pruning"]
    assert p["criterion"] == "activation" and p["eb_found"]
    at = {e["step"]: e for e in series}
    before, after = at[p["prune_step"] - 1], at[p["prune_step"]]
    if granularity == "weights":
        pruned = p["rate"] * res["prunable_params"]
    else:  # a head: Q/K/V rows with biases (3 x 16 x 33) and 16 output-projection columns; a neuron: 33 + 32
        removed = p["removed_units"]
        heads = sum(v for k, v in removed.items() if k.endswith("heads"))
        pruned = heads * (3 * 16 * 33 + 16 * 32) + (sum(removed.values()) - heads) * 65
        assert after["forward_flops_at_mean_length"] < before["forward_flops_at_mean_length"]
    assert before["active_params"] - after["active_params"] == pruned
    assert series[-1]["active_params"] == res["total_params"] - (pruned if granularity == "weights" else 0)
    per_token = series[0]["forward_flops_at_mean_length"] / res["cost"]["mean_train_tokens"]
    assert series[0]["train_flops"] == pytest.approx(3 * series[0]["tokens_trained"] * per_token)
    for a, b in zip(series, series[1:]):  # one log a step: each step's FLOPs at the cost the model had then
        step_flops = 3 * (b["tokens_trained"] - a["tokens_trained"]) * a["forward_flops_at_mean_length"]
        assert b["train_flops"] == pytest.approx(a["train_flops"] + step_flops / res["cost"]["mean_train_tokens"])
        assert b["train_seconds"] >= a["train_seconds"] and b["peak_memory_mb"] >= a["peak_memory_mb"] > 0
    assert {4, 8} <= {t["step"] for t in res["accuracy_timeline"]}
    stop = res["early_stopping"]
    evals = [e for e in res["log_history"] if "eval_loss" in e and e["step"] > p["prune_step"]][:-1]  # not the final
    at = stopping_evaluation([e["eval_loss"] for e in evals], 2)
    assert stop["stopped"] == (at is not None)
    if stop["stopped"]:
        assert res["optimizer_steps"] == stop["step"] == evals[at]["step"] <= p["prune_step"] + 20
        assert "early stopping: stopped at step" in proc.stdout
