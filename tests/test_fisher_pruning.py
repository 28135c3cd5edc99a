"""The Fisher criterion (fisher_pruning.py) and the whole-unit scores (pruning.core.whole_scores), issue 36: scores equal
per-example squared gate gradients taken by hand, one example at a time; gates change nothing in the forward; block
influence and the drop-the-layer loss are 0 for a layer made identity; a pick never removes the classifier's layer;
the criterion drives an Early-Bird run end to end."""
import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

from conftest import only_run_dir, run_script, tiny_args
from fisher_pruning import FisherCriterion
from pruning.core.units import PrunableUnits, protected_layers
from pruning.core.whole_scores import drop_loss, gate_fisher
from pruning.run.pruning_config import PruningConfig

PREFIX = "bert.encoder.layer"


def tiny(layers=3):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=0.5)  # layers that move the states
    return AutoModelForSequenceClassification.from_config(config)


def data(n=5, seed=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (n, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}


def by_hand(model, batch):
    """Per example: scalar gates on every head, neuron, MLP output and layer (written here, independently of the
    code under test), the gradient of that example's loss w.r.t. each; returns name -> (examples, units)."""
    layers = model.bert.encoder.layer
    out = {}
    for i in range(batch["labels"].shape[0]):
        gates, handles = {}, []
        for l, layer in enumerate(layers):
            h = torch.ones(2, requires_grad=True)
            n = torch.ones(12, requires_grad=True)
            mlp = torch.ones((), requires_grad=True)
            lay = torch.ones((), requires_grad=True)
            gates.update({f"{PREFIX}.{l}.heads": h, f"{PREFIX}.{l}.neurons": n, f"mlp{l}": mlp, f"layer{l}": lay})
            handles.append(layer.attention.output.dense.register_forward_pre_hook(
                lambda m, a, h=h: (a[0] * h.repeat_interleave(8),)))
            handles.append(layer.output.dense.register_forward_pre_hook(lambda m, a, n=n: (a[0] * n,)))
            handles.append(layer.output.dense.register_forward_hook(lambda m, a, o, mlp=mlp: o * mlp))
            seen = {}
            handles.append(layer.register_forward_pre_hook(lambda m, a, seen=seen: seen.update(x=a[0])))
            handles.append(layer.register_forward_hook(lambda m, a, o, seen=seen, lay=lay: seen["x"] + lay * (o - seen["x"])))
        one = {k: v[i:i + 1] for k, v in batch.items() if k != "labels"}
        loss = torch.nn.functional.cross_entropy(model(**one).logits, batch["labels"][i:i + 1])
        grads = torch.autograd.grad(loss, list(gates.values()))
        for hd in handles:
            hd.remove()
        for name, g in zip(gates, grads):
            out.setdefault(name, []).append(g.reshape(-1))
    stacked = {k: torch.stack(v) for k, v in out.items()}
    L = len(layers)
    stacked[f"{PREFIX}.mlps"] = torch.cat([stacked.pop(f"mlp{l}") for l in range(L)], 1)
    stacked[f"{PREFIX}.layers"] = torch.cat([stacked.pop(f"layer{l}") for l in range(L)], 1)
    return stacked


def test_the_criterion_scores_are_per_example_squared_gate_gradients_taken_by_hand():
    model = tiny()
    batch = data()
    hand = by_hand(model.eval(), batch)
    units = PrunableUnits(model, "heads+neurons", ("mlp", "layer"))
    with torch.no_grad():
        plain = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    criterion = FisherCriterion(units)
    model.train()  # no dropout in this config: training forwards compute what eval ones do
    out = model(**batch)  # HF's mean loss over the batch, as a training step computes it
    torch.testing.assert_close(out.logits.detach(), plain, rtol=0, atol=0)  # gates of 1 change nothing
    out.loss.backward()
    criterion.observe()
    scores = criterion.scores()
    for name in units.groups:
        torch.testing.assert_close(scores[name], (hand[name] ** 2).mean(0), rtol=1e-4, atol=1e-10)
    whole = criterion.whole_scores(units.to_original(scores, float("-inf")))
    torch.testing.assert_close(whole[f"{PREFIX}.mlps"], (hand[f"{PREFIX}.mlps"] ** 2).mean(0), rtol=1e-4, atol=1e-10)
    layer_fisher = (hand[f"{PREFIX}.layers"] ** 2).mean(0)
    assert whole[f"{PREFIX}.layers"][2] == torch.finfo(torch.float32).max / 2  # the classifier's layer: protected
    torch.testing.assert_close(whole[f"{PREFIX}.layers"][:2], layer_fisher[:2], rtol=1e-4, atol=1e-10)
    # a second step adds to the sums; reset clears them; the state round-trips
    state = {k: v.clone() for k, v in criterion.state_dict().items()}
    criterion.reset()
    with pytest.raises(RuntimeError):
        criterion.scores()
    criterion.load_state_dict(state)
    torch.testing.assert_close(criterion.scores()[f"{PREFIX}.0.heads"], scores[f"{PREFIX}.0.heads"])
    # evaluation forwards are not counted
    model.eval()
    with torch.no_grad():
        model(**{k: v for k, v in batch.items() if k != "labels"})
    assert criterion.step_gates == []
    criterion.close()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_gate_fisher_gives_the_same_information_in_one_pass_per_batch():
    model = tiny()
    batch = data()
    hand = by_hand(model.eval(), batch)
    units = PrunableUnits(model, "heads+neurons", ("mlp", "layer"))
    fisher, bi = gate_fisher(model, units, [{k: v[:3] for k, v in batch.items()}, {k: v[3:] for k, v in batch.items()}])
    for name, g in hand.items():
        torch.testing.assert_close(fisher.grads[name], g, rtol=1e-4, atol=1e-7)
    assert bi.shape == (3,) and (bi > 0).all()
    assert all(p.requires_grad for p in model.parameters())


def identity(layer):
    return layer.register_forward_hook(lambda m, a, o: a[0])


def test_a_layer_made_identity_has_block_influence_and_drop_loss_zero():
    model = tiny().eval()
    handle = identity(model.bert.encoder.layer[1])  # layer 1 computes nothing: its output is its input
    units = PrunableUnits(model, "heads+neurons", ("layer",))
    batch = data()
    _, bi = gate_fisher(model, units, [batch], kinds=("layer",))
    assert abs(float(bi[1])) < 1e-6 and bi[0] > 1e-3 and bi[2] > 1e-3  # 1 - cos(x, x): 0 up to rounding
    loss = drop_loss(model, units, [batch])
    assert loss[1] == 0 and loss[0] != 0 and loss[2] != 0
    handle.remove()


def test_the_last_layer_of_a_first_token_classifier_is_protected():
    units = PrunableUnits(tiny(4), "heads+neurons", ("layer",))
    assert protected_layers(units) == [3]
    scores = {n: torch.full(g.shape, 0.0 if g.layer == 3 else 10.0) for n, g in units.groups.items()}  # last lowest
    masks = PruningConfig(granularity="heads+neurons", layer_rate=0.25).select(units, {**scores,
                                                                                      **units.whole_scores(scores)})
    assert masks[f"{PREFIX}.layers"].tolist()[3] is True and sum(masks[f"{PREFIX}.layers"].tolist()) == 3


def test_fisher_criterion_runs_an_early_bird_run_with_whole_layers(tiny_bert_config, sst2_slice, tmp_path):
    config = json.loads(tiny_bert_config.read_text())
    path = tmp_path / "three.json"
    path.write_text(json.dumps({**config, "num_hidden_layers": 3}))
    r = run_script("bert.py", tiny_args(path, sst2_slice, tmp_path / "runs", trainer="fisher",
                                        granularity="heads+neurons", layer_rate=0.34, fisher_layer_score="block_influence"))
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((only_run_dir(tmp_path / "runs") / "results.json").read_text())
    assert results["pruning"]["structure"]["layers_kept"][-1] == 2  # the classifier's layer stays
    assert len(results["pruning"]["structure"]["layers_kept"]) == 2


def test_a_fisher_run_killed_during_the_search_resumes_exactly(tiny_bert_config, sst2_slice, tmp_path):
    # the criterion's sums, example count and block-influence sums travel in the checkpoint (kill at step 5:
    # FIFO of one mask, sums of the steps since the check at step 4)
    from test_resume import finished, kill_and_resume, same_run
    settings = dict(trainer="fisher", granularity="heads+neurons", head_rate=0.5, save_every=3)
    proc = run_script("bert.py", tiny_args(tiny_bert_config, sst2_slice, tmp_path / "ref", run_name="ref", **settings))
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_run(finished(tmp_path / "ref", "ref"),
             kill_and_resume(tiny_bert_config, sst2_slice, tmp_path / "killed", settings, 5, 3, "search"))
