"""frontier.py: the Pareto frontier and the targets' verdicts on hand-built points, the plan of trainings
(names, settings, teachers, the agent's rates), the figures read from hand-built compress.py sittings, and
one tiny study end to end (trains, compresses, skips what is done when run again)."""
import json
from pathlib import Path

import pytest

from conftest import run_script, tiny_args

import frontier
from pruning import settings
from pruning.run import experiment


def item(name, deployment="ORT int8", headline=0.88, delta=0.0, fp32=1.0, int8=1.0, compression=1.0, bytes_=1e8):
    return {"name": name, "deployment": deployment, "headline": headline, "headline_std": None, "delta": delta,
            "vs_dense_pytorch_fp32": fp32, "vs_fastest_dense_int8": int8, "sentences_per_s": 100.0 * fp32,
            "bytes": bytes_, "bytes_without_word_embeddings": bytes_ / 2, "compression": compression, "seeds": 3,
            "paired_p": None}


# --- the frontier and the verdicts ---------------------------------------------------------------------
def test_pareto_keeps_exactly_the_points_no_other_beats():
    a = {"n": "a", "speed": 1.0, "headline": 0.90, "bytes": 100}
    b = {"n": "b", "speed": 2.0, "headline": 0.85, "bytes": 50}
    c = {"n": "c", "speed": 1.5, "headline": 0.80, "bytes": 60}    # b is faster and more accurate
    d = {"n": "d", "speed": 3.0, "headline": 0.70, "bytes": 10}
    e = {"n": "e", "speed": 1.0, "headline": 0.89, "bytes": 100}   # a: as fast, more accurate
    front = frontier.pareto([a, b, c, d, e], "speed")
    assert [p["n"] for p in front] == ["a", "b", "d"]                # sorted by speed, accuracy falls along it
    smaller = frontier.pareto([a, b, c, d, e], "bytes", x_higher=False)
    assert [p["n"] for p in smaller] == ["a", "b", "d"]             # c: b is smaller and more accurate
    assert [p["n"] for p in frontier.pareto([a, dict(a, n="a2")], "speed")] == ["a", "a2"]  # equal: both stay


def test_speed_target_needs_both_ratios_within_the_tolerance():
    tol = 1.5
    fast_but_inaccurate = item("h0.75", delta=-0.02, fp32=12.0, int8=3.0)
    good = item("h0.5", delta=-0.015, fp32=8.0, int8=2.0)            # exactly at each limit: met
    verdict = frontier.speed_target([fast_but_inaccurate, good], tol)
    assert verdict["verdict"] == "met" and verdict["best"] is good
    slow = item("uniform", delta=0.0, fp32=7.9, int8=2.5)           # >= 2x int8 but under 8x fp32
    verdict = frontier.speed_target([fast_but_inaccurate, slow], tol)
    assert verdict["verdict"] == "missed" and verdict["best"] is slow
    assert "7.90× dense PyTorch fp32" in verdict["text"] and "h0.75" in verdict["text"]   # with the figures
    verdict = frontier.speed_target([fast_but_inaccurate], tol)
    assert verdict["verdict"] == "missed" and "no deployment within 1.5 points" in verdict["text"]
    assert frontier.speed_target([item("x", delta=None)], tol)["verdict"] == "not measured"
    assert frontier.speed_target([], tol)["verdict"] == "not measured"


def test_size_target_is_eight_times_smaller_at_the_dense_accuracy():
    small = item("h0.75 mixed", delta=-0.01, compression=8.2)
    smaller_but_worse = item("h0.75-l0.5", delta=-0.03, compression=12.0)
    assert frontier.size_target([small, smaller_but_worse], 1.5)["verdict"] == "met"
    assert frontier.size_target([small, smaller_but_worse], 1.5)["best"] is small
    verdict = frontier.size_target([item("uniform", delta=0.0, compression=7.99), smaller_but_worse], 1.5)
    assert verdict["verdict"] == "missed" and "7.99× smaller" in verdict["text"] and "12.00× smaller" in verdict["text"]


def test_agent_target_compares_deployment_by_deployment():
    uniform = [item("uniform", "ORT int8", headline=0.87, fp32=3.0), item("uniform", "ORT fp32", headline=0.87, fp32=1.5)]
    agent = [item("agent", "ORT int8", headline=0.87, fp32=3.1), item("agent", "ORT fp32", headline=0.875, fp32=1.5)]
    assert frontier.agent_target(uniform + agent)["verdict"] == "met"
    slower = [item("agent", "ORT int8", headline=0.88, fp32=2.9), agent[1]]
    verdict = frontier.agent_target(uniform + slower)
    assert verdict["verdict"] == "mixed" and "met in 1 of 2" in verdict["text"]
    worse = [item("agent", d, headline=0.86, fp32=9.0) for d in ("ORT int8", "ORT fp32")]
    assert frontier.agent_target(uniform + worse)["verdict"] == "missed"
    assert frontier.agent_target(uniform)["verdict"] == "not measured"


# --- the plan -------------------------------------------------------------------------------------------
def write_allocation(directory: Path, heads, neurons) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "allocation.json").write_text(json.dumps({"rates": {"head": heads, "neuron": neurons}}))
    return directory


def by_name(cells):
    return {c["name"]: c for c in cells}


def test_plan_names_settings_and_teachers(tmp_path):
    agent = write_allocation(tmp_path / "allocate", [0.25, 0.5, 0.25, 0.5, 0.25, 0.5], [0.3, 0.4, 0.5, 0.3, 0.4, 0.5])
    out = tmp_path / "frontier"
    config, passed_on, cells = frontier.settings(
        ["--seeds=42,43", "--aggressive=0.5:0.6:0,3/4:0.8:1/2", f"--agent_dir={agent}", f"--out_dir={out}",
         "--train_subset=16000"])
    cells = by_name(cells)
    points = ["uniform", "h0.5-n0.6-l0", "h0.75-n0.8-l0.5", "agent"]
    expected = [f"dense-s{s}" for s in (42, 43)] + [f"{p}{t}-s{s}" for s in (42, 43) for p in points
                                                    for t in ("", "-kd")]
    assert list(cells) == expected                                    # the dense runs first: they teach
    for name, cell in cells.items():
        assert "--train_subset=16000" in cell["args"] and "--measure_speed=false" in cell["args"]
        assert f"--seed={cell['seed']}" in cell["args"]
        teachers = [a for a in cell["args"] if a.startswith("--teacher=")]
        if "-kd-" in name:   # the dense run of the same seed, nothing else
            teacher = f"dense-s{cell['seed']}"
            assert teachers == [f"--teacher={out / teacher}"] and cell["teacher"] == teacher
        else:
            assert teachers == [] and cell["teacher"] is None
    assert "--trainer=dense" in cells["dense-s42"]["args"]
    assert not any(a.startswith("--head_rate") for a in cells["dense-s42"]["args"])
    uniform = cells["uniform-s43"]["args"]
    assert {"--trainer=slimming", "--granularity=heads+neurons", f"--head_rate={1 / 3!r}", "--neuron_rate=0.4",
            "--layer_rate=0.0"} <= set(uniform)
    assert {"--head_rate=0.75", "--neuron_rate=0.8", "--layer_rate=0.5"} <= set(cells["h0.75-n0.8-l0.5-kd-s42"]["args"])
    assert {"--head_rate=0.25,0.5,0.25,0.5,0.25,0.5", "--neuron_rate=0.3,0.4,0.5,0.3,0.4,0.5"} <= set(cells["agent-s42"]["args"])
    # each run's arguments are the configuration bert.py will run with
    run = experiment.configure(frontier_script_namespace(), cells["h0.75-n0.8-l0.5-s42"]["args"])
    assert (run["HEAD_RATE"], run["NEURON_RATE"], run["LAYER_RATE"], run["SEED"]) == (0.75, 0.8, 0.5, 42)
    assert frontier.compress_args(config, cells["uniform-kd-s43"]) == [
        str(out / "uniform-kd-s43"), f"--dense={out / 'dense-s43'}", "--variants=int8,mixed", "--runtime=auto",
        "--batch_size=64", "--threads=2"]


def frontier_script_namespace():
    import runpy
    return runpy.run_path(str(Path(frontier.__file__).parent / "bert.py"))


@pytest.mark.parametrize("args, message", [
    (["--seed=1"], "--seeds"), (["--layer_rate=0.5"], "--aggressive"), (["--teacher=x"], "--training=kd"),
    (["--aggressive=0.5:0.6"], "three rates"), (["--aggressive=a:b:c"], "head:neuron:layer"),
    (["--aggressive=0.5:0.6:1"], "[0, 1)"), (["--variants=int4"], "fp32, int8, mixed"),
    (["--training=distil"], "plain, kd"), (["--runtime=tvm"], "onnxruntime"), (["--criterion=dense"], "criterion"),
    (["--agent_dir=/nonexistent"], "allocation.json"), (["--no_such_setting=1"], "unknown setting"),
])
def test_bad_settings_are_named_before_any_work(tmp_path, args, message):
    with pytest.raises(settings.ConfigError, match=None) as e:
        frontier.settings([f"--out_dir={tmp_path / 'f'}", *args])
    assert message in str(e.value)
    assert not (tmp_path / "f").exists()


def test_an_agent_allocation_of_another_model_is_rejected(tmp_path):
    source = tmp_path / "allocate" / "uniform-s42"
    source.mkdir(parents=True)
    (source / "run_config.json").write_text(json.dumps({"config": {"MODEL": "bert-base-uncased", "HEAD_RATE": 0.5,
                                                                   "NEURON_RATE": 0.4}}))
    (tmp_path / "allocate" / "allocation.json").write_text(json.dumps(
        {"source": str(source), "rates": {"head": [0.5] * 12, "neuron": [0.4] * 12}}))
    with pytest.raises(settings.ConfigError, match="--model=bert-base-uncased"):
        frontier.settings([f"--agent_dir={tmp_path / 'allocate'}", f"--out_dir={tmp_path / 'f'}"])
    config, _, cells = frontier.settings([f"--agent_dir={tmp_path / 'allocate'}", f"--out_dir={tmp_path / 'f'}",
                                          "--model=bert-base-uncased", "--seeds=42"])
    agent = by_name(cells)["agent-s42"]
    assert agent["settings"]["searched_on"] == {"MODEL": "bert-base-uncased", "HEAD_RATE": 0.5, "NEURON_RATE": 0.4}


def test_an_agent_allocation_with_whole_layers_and_mlps_trains_exactly_those(tmp_path):
    """allocate.py's agent chose which layer and which MLP go (0/1 per layer): the agent point's runs get them as
    per-layer LAYER_RATE / MLP_RATE, which bert.py reads as exactly those layers."""
    agent = tmp_path / "allocate"
    agent.mkdir()
    heads, neurons = [0.25, 0.5, 0.25, 0.5, 0.25, 0.5], [0.3, 0.4, 0.5, 0.3, 0.4, 0.5]
    layers, mlps = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    (agent / "allocation.json").write_text(json.dumps({"rates": {"head": heads, "neuron": neurons, "layer": layers,
                                                                 "mlp": mlps}}))
    _, _, cells = frontier.settings([f"--agent_dir={agent}", f"--out_dir={tmp_path / 'f'}", "--seeds=42"])
    cells = by_name(cells)
    args = cells["agent-kd-s42"]["args"]
    assert {"--layer_rate=0.0,0.0,0.0,1.0,0.0,0.0", "--mlp_rate=0.0,1.0,0.0,0.0,0.0,0.0"} <= set(args)
    run = experiment.configure(frontier_script_namespace(), args)
    assert (run["LAYER_RATE"], run["MLP_RATE"]) == ((0, 0, 0, 1, 0, 0), (0, 1, 0, 0, 0, 0))
    assert not any(a.startswith("--mlp_rate") for a in cells["uniform-s42"]["args"])  # only where the agent set it


def test_an_agent_allocation_of_weights_is_rejected(tmp_path):
    agent = tmp_path / "allocate"
    agent.mkdir()
    (agent / "allocation.json").write_text(json.dumps({"rates": {"weight": [0.5, 0.5]}}))
    with pytest.raises(settings.ConfigError, match="heads\\+neurons"):
        frontier.settings([f"--agent_dir={agent}", f"--out_dir={tmp_path / 'f'}"])


# --- figures from compress.py sittings --------------------------------------------------------------------
def row(model, runtime, precision, accuracy, sps, bytes_, compression):
    return {"model": model, "runtime": runtime, "precision": precision, "accuracy": accuracy, "sentences_per_s": sps,
            "latency_ms": 5.0, "bytes": bytes_, "bytes_without_word_embeddings": bytes_ // 2,
            "compression": compression, "parameters": 1000, "trimmed_vocabulary": False}


def sitting(out: Path, name: str, seed: int, speed: float, dense_acc: float, acc: float, config: dict) -> dict:
    """A compress.json whose machine runs `speed` times as fast as another's: every ratio is the same."""
    record = {"run": str(out / name), "date": f"2026-12-0{seed - 40} 10:00", "compression_reference": "dense · ORT fp32",
              "task": {"name": "sst2", "title": "SST-2", "metrics": ["accuracy", "f1"], "headline": "accuracy",
                       "dev_set": "validation"},
              "config": {"VARIANTS": "int8", "RUNTIME": "onnxruntime", "BATCH_SIZE": 64, "THREADS": 2,
                         "DENSE": str(out / f"dense-s{seed}"), **config},
              "variants": {
                  "dense · PyTorch fp32": row("dense", "PyTorch", "fp32", dense_acc, 100 * speed, 90_000_000, 1.0),
                  "dense · ORT fp32": row("dense", "ONNX Runtime", "fp32", dense_acc, 150 * speed, 90_000_000, 1.0),
                  "dense · ORT int8": row("dense", "ONNX Runtime", "int8", dense_acc, 250 * speed, 23_000_000, 3.9),
                  "dense · OpenVINO int8": row("dense", "OpenVINO", "int8", dense_acc, 400 * speed, 23_000_000, 3.9),
                  "pruned · PyTorch fp32": row("pruned", "PyTorch", "fp32", acc, 150 * speed, 70_000_000, 1.3),
                  "pruned · ORT int8": row("pruned", "ONNX Runtime", "int8", acc - 0.002, 1000 * speed, 9_000_000, 10.0),
                  "pruned · ORT int8+trim": row("pruned", "ONNX Runtime", "int8+trim", acc, 1000 * speed, 1, 99.0)}}
    record["variants"]["pruned · ORT int8+trim"]["trimmed_vocabulary"] = True
    path = out / name / "compressed" / "compress.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    return record


def test_figures_are_ratios_within_each_sitting_and_means_over_seeds(tmp_path):
    out = tmp_path / "f"
    config, _, cells = frontier.settings([f"--out_dir={out}", "--seeds=42,43", "--aggressive=", "--training=plain",
                                          "--variants=fp32,int8", "--runtime=onnxruntime"])
    sitting(out, "uniform-s42", 42, speed=1.0, dense_acc=0.88, acc=0.87, config={})
    sitting(out, "uniform-s43", 43, speed=3.0, dense_acc=0.90, acc=0.88, config={})  # a 3x faster machine
    result = frontier.write(config, cells, "python frontier.py")
    points = {p["name"]: p for p in result["points"]}
    int8 = points["uniform"]["deployments"]["ORT int8"]
    assert int8["vs_fastest_dense_int8"]["mean"] == pytest.approx(2.5)     # 1000 / 400 in each sitting
    assert int8["vs_fastest_dense_int8"]["std"] == pytest.approx(0.0)
    assert int8["vs_dense_pytorch_fp32"]["mean"] == pytest.approx(10.0)
    assert int8["sentences_per_s"]["mean"] == pytest.approx(2000.0)        # shown for orientation only
    assert int8["per_seed"]["42"]["fastest_dense_int8"] == "dense · OpenVINO int8"
    assert int8["headline"]["mean"] == pytest.approx(0.873)
    assert int8["headline_vs_dense"]["mean"] == pytest.approx(-0.017)      # paired: (-0.012 - 0.022) / 2
    assert int8["compression"]["mean"] == pytest.approx(10.0) and int8["bytes"]["mean"] == 9_000_000
    assert set(points["uniform"]["deployments"]) == {"PyTorch fp32", "ORT int8"}   # no +trim row
    dense = points["dense"]["deployments"]
    assert set(dense) == {"PyTorch fp32", "ORT fp32", "ORT int8", "OpenVINO int8"}
    assert result["dense_headline"]["mean"] == pytest.approx(0.89)
    # 10x dense PyTorch, 2.5x the fastest dense int8, 10x smaller, but 1.7 points under dense: both missed
    verdicts = {t["target"].split(":")[0]: t["verdict"] for t in result["targets"]}
    assert verdicts == {"speed": "missed", "size": "missed", "agent": "not measured"}
    on_disk = json.loads((out / "frontier.json").read_text())
    assert on_disk["frontier"]["speed"] == result["frontier"]["speed"]
    # dense OpenVINO int8 (0.89, 4x) beats every other dense row and the pruned PyTorch fp32 (0.875, 1.5x)
    assert [(c["name"], c["deployment"]) for c in result["frontier"]["speed"]] == [
        ("dense", "OpenVINO int8"), ("uniform", "ORT int8")]
    text = (out / "frontier.md").read_text()
    assert "**missed**: speed" in text and "-1.70" in text and "same sitting" in text
    assert (out / "frontier_speed.png").stat().st_size > 0 and (out / "frontier_bytes.png").stat().st_size > 0
    # a wider tolerance meets both
    config["TOLERANCE"] = 2.0
    verdicts = [t["verdict"] for t in frontier.write(config, cells, "python frontier.py")["targets"]]
    assert verdicts == ["met", "met", "not measured"]


def test_a_compression_made_with_other_settings_is_rejected(tmp_path):
    out = tmp_path / "f"
    args = [f"--out_dir={out}", "--seeds=42", "--aggressive=", "--training=plain", "--variants=fp32,int8",
            "--runtime=onnxruntime"]
    sitting(out, "uniform-s42", 42, 1.0, 0.88, 0.87, config={})
    frontier.settings(args)                                            # the same settings: kept
    with pytest.raises(settings.ConfigError, match="RUNTIME: 'onnxruntime' there, 'openvino' now"):
        frontier.settings([*args[:-1], "--runtime=openvino"])
    with pytest.raises(settings.ConfigError, match="VARIANTS"):
        frontier.settings([*args[:-2], "--variants=fp32,int8,mixed", args[-1]])


# --- end to end -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_study_trains_compresses_and_skips_what_is_done(tiny_bert_config, sst2_slice, tmp_path):
    out = tmp_path / "frontier"
    args = [*[a for a in tiny_args(tiny_bert_config, sst2_slice, out) if not a.startswith("--out_dir=")
              and not a.startswith("--measure_speed")],
            f"--out_dir={out}", "--seeds=42", "--aggressive=0.5:0.5:0.5", "--training=kd", "--variants=fp32",
            "--runtime=onnxruntime", "--threads=1"]
    done = run_script("frontier.py", args, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = json.loads((out / "frontier.json").read_text())
    points = {p["name"]: p for p in result["points"]}
    assert set(points) == {"dense", "uniform-kd", "h0.5-n0.5-l0.5-kd"}
    for name in ("uniform-kd", "h0.5-n0.5-l0.5-kd"):
        run = json.loads((out / f"{name[:-3]}-kd-s42" / "results.json").read_text())
        assert run["distillation"]["teacher"] == str(out / "dense-s42")
        record = json.loads((out / f"{name[:-3]}-kd-s42" / "compressed" / "compress.json").read_text())
        ort = points[name]["deployments"]["ORT fp32"]["per_seed"]["42"]
        v = record["variants"]
        assert ort["vs_fastest_dense_int8"] == pytest.approx(v["pruned · ORT fp32"]["sentences_per_s"]
                                                             / v["dense · ORT int8"]["sentences_per_s"])
        assert ort["headline"] == v["pruned · ORT fp32"]["accuracy"]
    assert json.loads((out / "h0.5-n0.5-l0.5-kd-s42" / "results.json").read_text())["config"]["LAYER_RATE"] == 0.5
    assert {"PyTorch fp32", "ORT fp32", "ORT int8"} == set(points["dense"]["deployments"])
    assert (out / "frontier.md").exists() and (out / "frontier_speed.png").exists()
    # run again: every training and compression is skipped
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/compressed/compress.json")}
    stamps |= {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}
    again = run_script("frontier.py", args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(stamps) == 5 and all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_the_agent_point_is_compared_with_uniform_in_the_report(tmp_path):
    out = tmp_path / "f"
    agent = write_allocation(tmp_path / "allocate", [0.5] * 6, [0.4] * 6)
    config, _, cells = frontier.settings([f"--out_dir={out}", "--seeds=42", "--aggressive=", "--training=plain",
                                          "--variants=int8", "--runtime=onnxruntime", f"--agent_dir={agent}"])
    sitting(out, "uniform-s42", 42, speed=1.0, dense_acc=0.88, acc=0.87, config={})
    faster = sitting(out, "agent-s42", 42, speed=1.0, dense_acc=0.88, acc=0.87, config={})
    faster["variants"]["pruned · ORT int8"]["sentences_per_s"] = 1200.0           # as accurate, faster
    (out / "agent-s42" / "compressed" / "compress.json").write_text(json.dumps(faster))
    result = frontier.write(config, cells, "python frontier.py")
    agent_verdict = result["targets"][2]
    assert agent_verdict["verdict"] == "met" and "12.00× vs 10.00×" in agent_verdict["text"]
    assert f"{agent}/allocation.json" in (out / "frontier.md").read_text()


# --- speed points (issue 36) ------------------------------------------------------------------------------
def test_speed_points_select_on_the_dense_run_then_retrain_it_with_the_fixed_mask(tmp_path, monkeypatch):
    out = tmp_path / "frontier"
    config, _, cells = frontier.settings(["--seeds=42", "--aggressive=", "--training=kd", "--speedups=2,3",
                                          f"--out_dir={out}", "--train_subset=16000", "--threads=1"])
    cells = by_name(cells)
    assert list(cells) == ["dense-s42", "uniform-kd-s42", "speed2-kd-s42", "speed3-kd-s42"]
    cell = cells["speed2-kd-s42"]
    run = experiment.configure(frontier_script_namespace(), cell["args"])
    assert run["MODEL"] == str(out / "dense-s42" / "model") and run["MASK_FROM"] == str(out / "select-speed2-s42")
    assert run["TEACHER"] == str(out / "dense-s42") and run["DISTILL_HIDDEN"] == 1.0
    assert (run["SEARCH_EPOCHS"], run["RETRAIN_EPOCHS"], run["TRAIN_SUBSET"], run["SEED"]) == (0.5, 0.5, 16000, 42)
    assert cell["teacher"] == "dense-s42" and cell["settings"]["speedup"] == 2.0
    assert frontier.select_args(config, cell) == [
        f"--model={out / 'dense-s42'}", "--speedup=2.0", "--target=openvino-int8", "--latency_batch_size=64",
        "--threads=1", "--latency_cache=~/.cache/earlybird-pruning/latency", f"--out_dir={out / 'select-speed2-s42'}"]
    # the selection runs speed_prune.py once, before the training; a failed one skips the training
    calls = []

    def fake_run(script, argv, stdout):
        calls.append((Path(script).name, argv))
        if "--speedup=2.0" in argv:
            Path(cell["select"]["dir"]).mkdir(parents=True)
            (Path(cell["select"]["dir"]) / "masks.safetensors").write_bytes(b"")
            return 0
        return 1
    monkeypatch.setattr(frontier, "run_python", fake_run)
    assert frontier.select(config, cell) and calls[0][0] == "speed_prune.py"
    assert frontier.select(config, cell) and len(calls) == 1                   # there: not selected again
    assert not frontier.select(config, cells["speed3-kd-s42"]) and len(calls) == 2


def test_a_selection_made_for_another_speedup_is_refused(tmp_path):
    out = tmp_path / "frontier"
    (out / "select-speed2-s42").mkdir(parents=True)
    (out / "select-speed2-s42" / "allocation.json").write_text(json.dumps(
        {"settings": {"SPEEDUP": 2.5, "TARGET": "openvino-int8", "MODEL": str(out / "dense-s42")}}))
    with pytest.raises(settings.ConfigError, match="SPEEDUP: 2.5 there, 2.0 now"):
        frontier.settings(["--seeds=42", "--speedups=2", f"--out_dir={out}"])


@pytest.mark.parametrize("args, message", [
    (["--speedups=0.5"], "number >= 1"), (["--speedups=fast"], "number >= 1"),
    (["--speedups=2", "--target=tvm"], "openvino-int8"), (["--speedups=2", "--speed_criterion=dense"], "criterion"),
    (["--speedups=2", "--speed_epochs=0"], "> 0"), (["--mask_from=x"], "--speedups"),
    (["--distill_hidden=1"], "--speed_distill_hidden"),
])
def test_bad_speed_settings_are_named_before_any_work(tmp_path, args, message):
    with pytest.raises(settings.ConfigError) as e:
        frontier.settings([f"--out_dir={tmp_path / 'f'}", *args])
    assert message in str(e.value)
