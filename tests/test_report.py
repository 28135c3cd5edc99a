"""The sweep report on synthetic results: rows, the B3 ratio, mean ± std over seeds, the plots, report.py."""
import copy
import csv
import json

import pytest

import sweep
from conftest import run_script
from pruning.run import schema
from pruning.studies import sweep_plots, sweep_tables


def result(trainer, seed, acc, rate=None, eb=None, search=0.0, retrain=0.0, timeline=()):
    r = {"trainer": trainer, "run_dir": f"x/{trainer}-{rate}-{seed}", "config": {"SEED": seed},
         "sparsity": rate or 0.0, "optimizer_steps": 1000 if rate is None else 700,
         "metrics": {"final": {"accuracy": acc, "f1": acc}}, "peak_rss_mb": 100.0,
         "prunable_nonzero": 10, "prunable_params": 20, "accuracy_timeline": list(timeline),
         "cost": {"train_flos": 1e15, "inference_flops_dense": 2e9, "inference_flops_nonzero": 1e9,
                  "dev_sentences_per_second": 100.0}}
    if rate is None:
        r["phase_seconds"] = {"train": 100.0}
    else:
        r["phase_seconds"] = {"search": search, "prune": 5.0, "retrain": retrain}
        r["metrics"].update(before_prune={"accuracy": 0.8}, after_prune={"accuracy": 0.7})
        r["pruning"] = {"rate": rate, "eb_found": eb is not None, "eb_step": eb, "detector": {"epsilon": 0.1},
                        "distance_history": [{"step": 50, "distances": [], "max_distance": None},
                                             {"step": 100, "distances": [0.05], "max_distance": 0.05}]}
    return r


@pytest.fixture
def sweep_dir(tmp_path):
    timeline = [{"step": 100, "train_seconds": 10.0, "accuracy": 0.80},
                {"step": 200, "train_seconds": 20.0, "accuracy": 0.88}]
    runs = [result("dense", 1, 0.90, timeline=timeline), result("dense", 2, 0.90, timeline=timeline),
            result("magnitude", 1, 0.86, rate=0.5, eb=100, search=4.0, retrain=8.0),
            result("magnitude", 2, 0.88, rate=0.5, eb=100, search=4.0, retrain=8.0),
            result("gradient", 1, 0.95, rate=0.5, eb=None, search=30.0, retrain=30.0)]
    for i, r in enumerate(runs):
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "results.json").write_text(json.dumps(r))
    return tmp_path


def test_report_rows_b3_and_files(sweep_dir):
    rows = {(r["trainer"], r["seed"]): r for r in sweep_tables.write(sweep_dir)}
    mag = rows[("magnitude", 1)]
    # 0.86 is first reached by the dense run at 20 s; search + retrain = 12 s (pruning evals left out).
    assert mag["dense_s_to_same_score"] == 20.0 and mag["b3_ratio"] == pytest.approx(0.6)
    assert mag["eb_fraction_of_dense_steps"] == pytest.approx(0.1)
    assert mag["time_vs_dense"] == pytest.approx(17 / 20)  # dense: training seconds without its evaluations
    assert rows[("gradient", 1)]["dense_s_to_same_score"] is None  # the dense run never got to 0.95
    with open(sweep_dir / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 5
    md = (sweep_dir / "results.md").read_text()
    assert "| gradient | 0.5 | 1 |" in md and "never" in md
    assert "| magnitude | plain | 0.5 | 2 | 0.7000 ± 0.0000 | 0.8700 ± 0.0141 |" in md   # mean ± std over the two seeds
    # B1 at 50%: the best criterion (gradient, 0.95) beats dense (0.90); B3 over the magnitude runs only.
    assert "| B1 accuracy kept at 50% sparsity (≤ 0.5 points under dense) | best: gradient 0.9500 vs dense " \
           "0.9000: -5.00 points under | met |" in md
    assert "B3 (search + retrain) / dense time to the same accuracy ≤ 0.6 | 0.60–0.60 over 2 runs; " \
           "1 runs beat every dense evaluation | met |" in md
    for png in ("accuracy_vs_sparsity.png", "mask_distance.png", "time_breakdown.png"):
        assert (sweep_dir / png).stat().st_size > 5000


def test_sweep_grid_runs_dense_once_per_seed():
    grid = list(sweep.cells(["dense", "magnitude"], [0.3, 0.5], [1, 2], 50))
    assert [name for name, _ in grid] == ["dense-s1", "magnitude-r0.3-s1", "magnitude-r0.5-s1",
                                          "dense-s2", "magnitude-r0.3-s2", "magnitude-r0.5-s2"]
    assert "--eval_every=50" in grid[0][1] and "--pruning_rate=0.3" in grid[1][1]


def test_sweep_variants_distil_from_the_dense_cell_of_their_seed(tmp_path):
    grid = dict(sweep.cells(["magnitude", "dense"], [0.9], [1], 50, variants=["plain", "kd", "kd+gradual"], gradual=3,
                            out=tmp_path))
    assert list(grid) == ["dense-s1", "magnitude-r0.9-s1", "magnitude-kd-r0.9-s1", "magnitude-kd-gradual-r0.9-s1"]
    assert f"--teacher={tmp_path / 'dense-s1'}" in grid["magnitude-kd-r0.9-s1"]
    assert "--gradual_updates=3" in grid["magnitude-kd-gradual-r0.9-s1"]
    assert not any(a.startswith(("--teacher", "--gradual")) for a in grid["magnitude-r0.9-s1"] + grid["dense-s1"])


@pytest.mark.parametrize("arg, instead", [("--seed=5", "--seeds"), ("--teacher=runs/x", "--variants=kd"),
                                         ("--pruning_rate=0.7", "--rates")])
def test_sweep_refuses_what_it_sets_for_each_cell_before_any_work(monkeypatch, tmp_path, arg, instead, capsys):
    # passed on to every cell, these would silently override each cell's own seed, teacher or rate
    monkeypatch.setattr("sys.argv", ["sweep.py", f"--out_dir={tmp_path / 'out'}", arg])
    with pytest.raises(SystemExit) as e:
        sweep.main()
    assert e.value.code == 2 and capsys.readouterr().err.strip() == (
        f"error: {arg}: sweep.py sets {arg.split('=')[0]} for each of its runs; set {instead} instead")
    assert not (tmp_path / "out").exists()


def test_variants_get_their_own_rows_and_a_paired_test_against_dense(tmp_path):
    results = []
    for seed, dense_acc in ((1, 0.90), (2, 0.88), (3, 0.89)):
        results.append(result("dense", seed, dense_acc))
        for teacher, acc in (("", dense_acc - 0.03), ("runs/dense", dense_acc - 0.01)):
            r = result("magnitude", seed, acc, rate=0.9, eb=100, search=4.0, retrain=6.0)
            r["config"]["TEACHER"] = teacher
            results.append(r)
    rows = sweep_tables.rows_of([schema.parse(r) for r in results])   # version 1: no schema_version, few keys
    assert {r["variant"] for r in rows} == {"plain", "kd"}
    md = sweep_tables.markdown(rows, schema.TaskInfo())
    assert "| magnitude | kd | 0.9 | 3 |" in md and "| magnitude | plain | 0.9 | 3 |" in md
    kd_line = next(line for line in md.splitlines() if line.startswith("| magnitude | kd | 0.9 | 3 |"))
    assert "-0.0100 ± 0.0000" in kd_line
    ablation = md[md.index("against the one-shot (plain) run"):]   # kd against plain, seed by seed: +2 points
    assert "| magnitude | kd | 0.9 | 3 | 0.8800 ± 0.0100 | 0.0200 ± 0.0000 |" in ablation
    assert "| magnitude | plain |" not in ablation
    assert "best: magnitude (kd) 0.8800" in sweep_tables.targets(rows, schema.TaskInfo())


def test_heads_and_neurons_runs_get_their_own_table_beside_the_dense_run_of_their_seed(sweep_dir):
    for seed, acc in ((1, 0.85), (2, 0.80)):
        r = result("slimming", seed, acc, rate=0.5, eb=100, search=4.0, retrain=6.0)
        r["pruning"].update(rate=None, head_rate=1 / 3, neuron_rate=0.4, prune_step=100, step_seconds={"search": 0.2, "retrain": 0.1},
                            structure={"heads_kept_per_layer": [8, 8], "heads_total_per_layer": [12, 12],
                                       "neurons_kept_per_layer": [900, 943], "neurons_total_per_layer": [1536, 1536]})
        r["parameters"] = {"dense": {"total": 200, "without_embeddings": 100},
                           "final": {"total": 150, "without_embeddings": 50}}
        r["speed"] = {"train_step_speedup": 1.5, "batch1_ratio": 1.2, "batch64_ratio": 1.6}
        (sweep_dir / f"slim{seed}").mkdir()
        (sweep_dir / f"slim{seed}" / "results.json").write_text(json.dumps(r))
    rows = sweep_tables.write(sweep_dir)
    assert not any(r["trainer"] == "slimming" for r in rows)     # not in the unstructured table
    text = (sweep_dir / "results.md").read_text()
    table = text.split("## Heads + neurons")[1]
    # B3: dense first reaches 0.85 after 20 s of training; search + retrain took 4 + 6 s
    assert "| slimming | heads 0.333, neurons 0.4 | 1 | 100 | 16 / 24 | 1,843 / 3,072 | 0.750 / 0.500 | 0.7000 | 0.8500 | 0.9000 | 4 | 6 | 0.50 | 1.50 | 1.20 / 1.60 | 0.50 |" in table
    # paired with the dense run of the same seed: -0.05 and -0.10
    assert "| slimming | heads 0.333, neurons 0.4 | 1, 2 | 0.8250 ± 0.0354 | 0.9000 ± 0.0000 | -0.0750 ± 0.0354 |" in table


def test_overlap_of_hand_built_masks_and_its_chance_level():
    import torch
    from pruning.core.masks import overlap
    a = {"l0": torch.tensor([1, 1, 0, 0], dtype=torch.bool), "l1": torch.tensor([1, 1, 1, 0], dtype=torch.bool)}
    b = {"l0": torch.tensor([1, 0, 1, 0], dtype=torch.bool), "l1": torch.tensor([0, 1, 1, 1], dtype=torch.bool)}
    o = overlap(a, b)
    assert o["shared"] == 3 and o["kept"] == (5, 5) and o["jaccard"] == 3 / 7
    chance = 2 * 2 / 4 + 3 * 3 / 4                   # expected shared units of random choices, layer by layer
    assert o["chance_jaccard"] == pytest.approx(chance / (10 - chance))
    assert overlap(a, a)["jaccard"] == 1.0


def test_structured_sweep_has_one_cell_per_trainer_and_seed():
    grid = dict(sweep.cells(["dense", "activation"], [0.3, 0.5], [1, 2], 50, "heads+neurons"))
    assert sorted(grid) == ["activation-s1", "activation-s2", "dense-s1", "dense-s2"]
    assert "--granularity=heads+neurons" in grid["activation-s1"] and not any("rate" in a for a in grid["activation-s1"])
    assert "--granularity=heads+neurons" not in grid["dense-s1"] and "--eval_every=50" in grid["dense-s1"]


def test_every_criterion_found_is_plotted_not_a_fixed_list(sweep_dir):
    # activation (and slimming) runs were left out of accuracy_vs_sparsity.png and mask_distance.png
    for seed, acc in ((1, 0.84), (2, 0.83)):
        r = result("activation", seed, acc, rate=0.7, eb=100, search=4.0, retrain=6.0)
        r["pruning"]["distance_history"] = {"neurons": r["pruning"]["distance_history"]}   # one per detector
        (sweep_dir / f"act{seed}").mkdir()
        (sweep_dir / f"act{seed}" / "results.json").write_text(json.dumps(r))
    results = sweep_tables.load(sweep_dir)
    rows = sweep_tables.write(sweep_dir)
    curves = sweep_plots.score_curves(rows)
    assert list(curves) == ["activation", "gradient", "magnitude"]
    assert curves["activation"] == {"sparsity": [0.7], "final": [pytest.approx(0.835)], "after_prune": [0.7]}
    distances = sweep_plots.distance_curves([r for r in results if r.pruning])
    assert [line["label"] for line in distances["activation"]] == ["rate 0.7, seed 1", "rate 0.7, seed 2"]
    assert distances["activation"][0]["steps"] == [100] and distances["activation"][0]["eb_distance"] == 0.05
    assert distances["gradient"][0]["eb_step"] is None and "dense" not in distances
    assert "| activation | plain | 0.7 | 2 |" in (sweep_dir / "results.md").read_text()


def test_report_script_help_lists_its_settings():
    proc = run_script("report.py", ["--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--sweep_dir" in proc.stdout and "'sweeps/bert'" in proc.stdout and "--plots" in proc.stdout
    assert "no finished runs" not in proc.stdout


def test_report_script_takes_the_sweep_directory_as_its_argument(sweep_dir):
    proc = run_script("report.py", [str(sweep_dir), "--plots=false"])   # as the README calls it
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| magnitude | plain | 0.5 | 2 |" in (sweep_dir / "results.md").read_text()
    assert not (sweep_dir / "accuracy_vs_sparsity.png").exists()
    bad = run_script("report.py", [f"--sweep_dir={sweep_dir}", "--sweepdir=x"])
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown setting --sweepdir")
    missing = run_script("report.py", [str(sweep_dir / "no-such-sweep")])
    assert missing.returncode == 2 and "must be a sweep directory" in missing.stderr


def test_report_script_refuses_a_results_file_of_a_newer_schema_version(sweep_dir):
    from pruning.run import schema
    (sweep_dir / "run9").mkdir()
    (sweep_dir / "run9" / "results.json").write_text(json.dumps({"schema_version": schema.SCHEMA_VERSION + 1}))
    proc = run_script("report.py", [str(sweep_dir), "--plots=false"])
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: {sweep_dir / 'run9' / 'results.json'}: schema_version {schema.SCHEMA_VERSION + 1} is newer than this "
        f"code reads (up to {schema.SCHEMA_VERSION}); read it with the version of the code that wrote it, or update this one")


# --- tasks other than SST-2: results written through pruning.run.schema.write, as runs write them ------------------
STSB_LABELS = [0.0, 1.0, 2.0, 3.0, 4.0]
STSB = {"name": "stsb", "title": "STS-B", "metrics": ["pearson", "spearmanr"], "headline": "pearson",
        "label_names": None, "text_columns": ["sentence1", "sentence2"], "dev_sets": ["validation"]}
# predictions whose Pearson r against STSB_LABELS is known by hand: sum((x - 2)(y - 2)) / 10
PERFECT, SWAP_END, SWAP_TWO, ROTATE = [0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 4.0, 3.0], [1.0, 0.0, 3.0, 2.0, 4.0], \
    [2.0, 1.0, 0.0, 3.0, 4.0]                             # r = 1, 0.9, 0.8, 0.6 (Spearman the same: ranks = values)
DENSE_TIMELINE = [{"step": 10, "train_seconds": 10.0, "accuracy": None, "score": 0.7},
                  {"step": 20, "train_seconds": 20.0, "accuracy": None, "score": 0.85}]


def stsb_run(directory, name, trainer, seed, predicted, pearson, rate=None):
    """A v3 STS-B run (test_schema's `current` made a regression) written with schema.write into directory/name."""
    from test_schema import current
    r = copy.deepcopy(current())
    def scores(v):
        return {"accuracy": None, "f1": None, "loss": 0.5, "pearson": v, "spearmanr": v}
    r.update(task=STSB, trainer=trainer, run_dir=str(directory / name), config={"SEED": seed, "TASK": "stsb"},
             metrics={"final": scores(pearson)}, sparsity=rate or 0.0, log_history=[],
             dev_predictions={"predicted": predicted, "label": STSB_LABELS}, distillation=None)
    if rate is None:
        del r["pruning"]
        r.update(phase_seconds={"train": 25.0}, accuracy_timeline=DENSE_TIMELINE)
    else:
        r["metrics"].update(before_prune=scores(0.7), after_prune=scores(0.5))
        r["pruning"].update(criterion=trainer, granularity="weights", rate=rate, head_rate=None, neuron_rate=None,
                            structure=None, eb_step=2, prune_step=2)
        r["phase_seconds"] = {"search": 4.0, "prune": 1.0, "retrain": 6.0}
    (directory / name).mkdir()
    schema.write(directory / name, r)


@pytest.fixture
def stsb_sweep(tmp_path):
    for name, trainer, seed, predicted, pearson, rate in (
            ("dense-s1", "dense", 1, PERFECT, 1.0, None), ("dense-s2", "dense", 2, SWAP_END, 0.9, None),
            ("magnitude-r0.5-s1", "magnitude", 1, SWAP_TWO, 0.8, 0.5),
            ("magnitude-r0.5-s2", "magnitude", 2, ROTATE, 0.6, 0.5)):
        stsb_run(tmp_path, name, trainer, seed, predicted, pearson, rate)
    return tmp_path


def test_hand_built_pearson_values():
    from scipy.stats import pearsonr
    assert [pearsonr(x, STSB_LABELS)[0] for x in (PERFECT, SWAP_END, SWAP_TWO, ROTATE)] == pytest.approx([1, .9, .8, .6])


def test_an_stsb_sweep_reports_and_names_pearson_everywhere(stsb_sweep, monkeypatch):
    import matplotlib.axes
    from pruning.studies import stats
    monkeypatch.setattr(stats, "METRIC_RESAMPLES", 1000)
    ylabels = []
    original = matplotlib.axes.Axes.set_ylabel
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel", lambda ax, label, **kw: (ylabels.append(label),
                                                                                       original(ax, label, **kw))[1])
    rows = {(r["trainer"], r["seed"]): r for r in sweep_tables.write(stsb_sweep)}
    # B3 in Pearson r: the dense run first reaches 0.8 at 20 s, 0.6 at 10 s; search + retrain took 10 s
    assert rows[("magnitude", 1)]["dense_s_to_same_score"] == 20.0 and rows[("magnitude", 1)]["b3_ratio"] == 0.5
    assert rows[("magnitude", 2)]["dense_s_to_same_score"] == 10.0 and rows[("magnitude", 2)]["b3_ratio"] == 1.0
    md = (stsb_sweep / "results.md").read_text()
    assert md.startswith("Task: STS-B. Every score below is STS-B dev Pearson r, the task's headline metric (pearson)")
    assert "| Pearson r before prune | Pearson r after prune | Pearson r final | Spearman ρ final | EB step |" in md
    assert "accuracy" not in md.lower() and "acc " not in md
    assert "| magnitude | 0.5 | 1 | 0.5000 | 0.7000 | 0.5000 | 0.8000 | 0.8000 | 2 |" in md
    # mean ± std over the seeds (0.8, 0.6); paired with dense (1.0, 0.9): −0.2 and −0.3, t = −5 with 1 degree
    # of freedom, p = 1 − (2/π) arctan 5 = 0.126; the bootstrap resamples Pearson r itself
    boot = stats.bootstrap_difference([(SWAP_TWO, STSB_LABELS), (ROTATE, STSB_LABELS)],
                                      [(PERFECT, STSB_LABELS), (SWAP_END, STSB_LABELS)], "pearson")
    assert (f"| magnitude | plain | 0.5 | 2 | 0.5000 ± 0.0000 | 0.7000 ± 0.1414 | 0.7000 ± 0.1414 | -0.2500 ± 0.0707 | "
            f"0.126 | {stats.p_text(boot)} |") in md
    assert "| dense | plain | 0 | 2 | – | 0.9500 ± 0.0707 | 0.9500 ± 0.0707 | – | – | – |" in md
    assert "| B1 Pearson r kept at 50% sparsity (≤ 0.5 points under dense) | best: magnitude 0.7000 vs dense 0.9500: " \
           "+25.00 points under | missed |" in md
    assert "| B3 (search + retrain) / dense time to the same Pearson r ≤ 0.6 | 0.50–1.00 over 2 runs | missed |" in md
    with open(stsb_sweep / "results.csv") as f:
        reader = csv.DictReader(f)
        header, by_run = reader.fieldnames, {r["run"]: r for r in reader}
    assert header[6:10] == ["pearson_before_prune", "pearson_after_prune", "pearson_final", "spearmanr_final"]
    assert "dense_s_to_same_score" in header and not any(c.startswith(("acc", "f1", "score")) for c in header)
    assert by_run["magnitude-r0.5-s2"]["pearson_final"] == "0.6"
    assert (stsb_sweep / "pearson_vs_sparsity.png").stat().st_size > 5000
    assert not (stsb_sweep / "accuracy_vs_sparsity.png").exists() and (stsb_sweep / "cost_vs_step.png").exists()
    assert ylabels.count("STS-B dev Pearson r") == 2 and not any("accuracy" in y for y in ylabels)


def test_metric_labels_name_the_task_and_its_dev_set():
    cola = schema.TaskInfo(name="cola", title="CoLA", metrics=["matthews_correlation", "accuracy"],
                           headline="matthews_correlation")
    mnli = schema.TaskInfo(name="mnli", title="MNLI", metrics=["accuracy"], dev_sets=["matched", "mismatched"])
    assert sweep_tables.dev_metric_label(cola) == "CoLA dev Matthews corr." and sweep_tables.metric_title(cola) == "Matthews corr."
    assert sweep_tables.dev_metric_label(schema.TaskInfo()) == "SST-2 dev accuracy"
    assert sweep_tables.dev_metric_label(mnli) == "MNLI dev accuracy (matched)"
    assert sweep_tables.extra_scores(mnli) == [("accuracy", "mismatched")]
    assert sweep_tables.extra_title("accuracy", "mismatched") == "accuracy final (mismatched)"
    assert sweep_tables.csv_columns(cola)[0][6:10] == ["matthews_correlation_before_prune", "matthews_correlation_after_prune",
                                                 "matthews_correlation_final", "accuracy_final"]


def test_a_sweep_directory_mixing_tasks_is_refused_naming_them(sweep_dir):
    stsb_run(sweep_dir, "stsb-dense-s1", "dense", 1, PERFECT, 1.0)
    message = (f"{sweep_dir} holds runs of 2 tasks (SST-2: run0, run1, run2, run3, run4; STS-B: stsb-dense-s1); "
               "a table pools one task's runs")
    with pytest.raises(sweep_tables.MixedTasks) as e:
        sweep_tables.load(sweep_dir)
    assert str(e.value).startswith(message)
    proc = run_script("report.py", [str(sweep_dir), "--plots=false"])
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}")
    assert not (sweep_dir / "results.md").exists()


def test_lottery_report_of_an_stsb_study_names_pearson_and_leaves_out_mcnemar(tmp_path, monkeypatch):
    import lottery
    from pruning.studies import stats
    monkeypatch.setattr(stats, "METRIC_RESAMPLES", 1000)
    for name, seed, predicted, pearson in (("dense-s1", 1, PERFECT, 1.0), ("dense-s2", 2, SWAP_END, 0.9),
                                           ("good-pretrained-s1", 1, SWAP_TWO, 0.8),
                                           ("good-pretrained-s2", 2, ROTATE, 0.6)):
        stsb_run(tmp_path, name, "dense" if name.startswith("dense") else "magnitude", seed, predicted, pearson)
    text = lottery.write(tmp_path, {"CRITERION": "magnitude", "GRANULARITY": "weights", "EPOCHS": 1.0})
    assert text.startswith("# Lottery tickets: magnitude, weights, STS-B dev Pearson r")
    assert "STS-B dev Pearson r, mean ± std over seeds (n)." in text and "accuracy" not in text.lower()
    assert "| dense (no mask) | 0.9500 ± 0.0707 (2) | – | – |" in text and "| good | 0.7000 ± 0.1414 (2) | – | – |" in text
    assert "no McNemar test (STS-B is a regression" in text
    boot = stats.bootstrap_difference([(SWAP_TWO, STSB_LABELS), (ROTATE, STSB_LABELS)],
                                      [(PERFECT, STSB_LABELS), (SWAP_END, STSB_LABELS)], "pearson")
    assert (f"| good, pretrained / dense | 2 | -0.2500 ± 0.0707 | 0.126 | {stats.NO_MCNEMAR} | "
            f"{boot['low']:+.4f} … {boot['high']:+.4f} | {stats.p_text(boot)} |") in text
    assert (tmp_path / "lottery_pearson.png").stat().st_size > 5000 and "![score](lottery_pearson.png)" in text
