"""pruning.run.schema: a results.json of the previous layout (version 1) reads typed, a newer version or a
malformed file is one clear error, write() refuses an undeclared key, and a round trip keeps everything."""
import copy
import dataclasses
import json

import pytest

from pruning.run import schema


def version_1() -> dict:
    """A pruning run's results.json as the code before schema_version wrote it (heads+neurons, distilled)."""
    split = {"embeddings": 100, "encoder": 800, "head": 50, "total": 950, "without_embeddings": 850}
    phases = {"search": 12.5, "prune": 1.5, "retrain": 30.0, "teacher": 4.0}
    return {
        "script": "bert.py", "run_dir": "runs/slim-s1", "trainer": "slimming", "model": "bert (tiny)",
        "model_source": "configs/tiny.json", "data": "../shared/sst2", "train_rows": 64, "dev_rows": 32,
        "config": {"SEED": 1, "MAX_LENGTH": 64, "GRANULARITY": "heads+neurons", "DATA_DIR": "../shared/sst2",
                   "TEACHER": "runs/dense-s1", "GRADUAL_UPDATES": 0, "TRAINER": "slimming"},
        "world_size": 1, "optimizer_steps": 40,
        "metrics": {"before_prune": {"accuracy": 0.75, "f1": 0.7, "loss": 0.5},
                    "after_prune": {"accuracy": 0.6, "f1": None, "loss": 0.9},
                    "final": {"accuracy": 0.8125, "f1": 0.8, "loss": 0.45}},
        "total_params": 950, "nonzero_params": 940,
        "parameters": {"dense": split, "final": {**split, "encoder": 600, "total": 750, "without_embeddings": 650}},
        "prunable_params": 800, "prunable_nonzero": 600, "sparsity": 0.25, "train_seconds": 44.0, "peak_rss_mb": 812.5,
        "cost": {"train_flos": 1e12, "dev_tokens": 400, "mean_train_tokens": 12.5, "train_flops": 3e12,
                 "inference_flops_dense": 2e9, "inference_flops_nonzero": 1.5e9, "dev_sentences_per_second": 90.0},
        "speed": {"threads": 2, "rounds": 3, "batch1_pruned": 50.0, "batch1_dense": 40.0, "batch1_ratio": 1.25,
                  "batch64_pruned": 300.0, "batch64_dense": 200.0, "batch64_ratio": 1.5, "train_step_pruned": 0.1,
                  "train_step_dense": 0.2, "train_step_ratio": 0.5, "train_step_speedup": 2.0},
        "date": "2025-01-01T12:00:00", "versions": {"torch": "2.6", "transformers": "5.24"},
        "log_history": [{"loss": 0.7, "step": 10}, {"eval_loss": 0.5, "eval_accuracy": 0.75, "step": 20}],
        "accuracy_timeline": [{"step": 20, "train_seconds": 10.0, "accuracy": 0.75}],
        "cost_series": [{"step": 10, "train_seconds": 5.0, "tokens_trained": 800, "train_flops": 1e12,
                         "forward_flops_at_mean_length": 1e8, "active_params": 950,
                         "active_params_without_embeddings": 850, "peak_memory_mb": 800.0, "accuracy": None}],
        "early_stopping": {"patience": 2, "threshold": 0.0, "stopped": True, "step": 30, "phase": "retrain",
                           "best_step": 20, "best_loss": 0.4, "loss": 0.5, "reason": "dev loss did not improve"},
        "dev_predictions": {"predicted": [1, 0], "label": [1, 1]},
        "distillation": {"cached": True, "seconds": 0.0, "compute_seconds": 4.0, "file": "t.safetensors",
                         "teacher": "/abs/runs/dense-s1", "temperature": 2.0, "hardness": 0.5},
        "pruning": {"criterion": "slimming", "granularity": "heads+neurons", "scope": "global", "rate": None,
                    "head_rate": 0.25, "neuron_rate": 0.5, "eb_found": True, "eb_step": 20, "eb_epoch": 2.5,
                    "prune_step": 20, "search_steps_budget": 24, "retrain_steps": 20, "steps_per_epoch": 8,
                    "fixed_mask_from": None, "gradual": None,
                    "detector": {"window": 5, "epsilon": 0.1, "check_every": 2},
                    "distance_history": {"heads": [{"step": 2, "distances": [], "max_distance": None}],
                                         "weights": [{"step": 2, "distances": [0.2], "max_distance": 0.2}]},
                    "mask_fingerprint": "abc", "removed_units": {"layer.0.heads": 1},
                    "phase_seconds": phases,
                    "structure": {"heads_total_per_layer": [4, 4], "heads_kept": [[0, 1, 2], [1, 2, 3]],
                                  "heads_kept_per_layer": [3, 3], "neurons_total_per_layer": [64, 64],
                                  "neurons_kept_per_layer": [32, 32]},
                    "step_seconds": {"search": 0.5, "retrain": 1.5}},
        "phase_seconds": phases,
    }


def test_a_version_1_file_reads_with_typed_values(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(version_1()))
    r = schema.read(tmp_path)          # the run directory, or the file itself
    assert r == schema.read(tmp_path / "results.json") and r.schema_version == 1
    assert r.trainer == "slimming" and r.config.seed == 1 and r.config.granularity == "heads+neurons"
    assert r.config.teacher == "runs/dense-s1" and r.config.max_length == 64
    assert r.metrics.final.accuracy == 0.8125 and r.metrics.accuracy("after_prune") == 0.6
    assert r.metrics.after_prune.f1 is None and r.metrics.before_prune.loss == 0.5
    p = r.pruning
    assert (p.criterion, p.eb_found, p.eb_step, p.eb_epoch, p.prune_step) == ("slimming", True, 20, 2.5, 20)
    assert p.detector.epsilon == 0.1 and p.structure.heads_kept_per_layer == [3, 3] and p.rate is None
    assert p.removed_units == {"layer.0.heads": 1} and p.phase_seconds["teacher"] == 4.0
    assert p.distances() == [{"step": 2, "distances": [0.2], "max_distance": 0.2}]   # the weights' detector
    assert r.parameters.kept_without_embeddings() == pytest.approx(650 / 850)
    assert r.cost.train_flops == 3e12 and r.speed.train_step_speedup == 2.0
    assert r.accuracy_timeline[0].train_seconds == 10.0 and r.cost_series[0].active_params_without_embeddings == 850
    assert r.early_stopping.stopped and r.early_stopping.phase == "retrain"
    assert r.dev_predictions.predicted == [1, 0] and r.distillation.compute_seconds == 4.0
    assert r.raw["log_history"][1]["eval_accuracy"] == 0.75 and r.source == str(tmp_path / "results.json")


def test_a_dense_or_sparse_old_file_reads_with_none_for_what_it_lacks():
    r = schema.parse({"trainer": "dense", "config": {"SEED": 3}, "metrics": {"final": {"accuracy": 0.9}}})
    assert r.schema_version == 1 and r.pruning is None and r.speed is None and r.dev_predictions is None
    assert r.metrics.before_prune is None and r.metrics.accuracy("after_prune") is None
    assert r.cost.train_flops is None and r.cost_series == [] and r.config.granularity == "weights"


@pytest.mark.parametrize("content, message", [
    ({"schema_version": schema.SCHEMA_VERSION + 1, "trainer": "dense"},
     f"schema_version {schema.SCHEMA_VERSION + 1} is newer than this code reads (up to {schema.SCHEMA_VERSION})"),
    ({"schema_version": "2"}, "schema_version '2' is not a version"),
    ({"metrics": {"final": [0.9]}}, "(schema_version 1) is malformed: results.metrics.final: expected an object"),
    ([1, 2], "not a run's results (a JSON object), but list"),
])
def test_a_newer_or_malformed_file_is_one_error_naming_the_file_and_version(tmp_path, content, message):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(content))
    with pytest.raises(schema.SchemaError) as e:
        schema.read(path)
    assert str(e.value).startswith(f"{path}") and message in str(e.value)


def test_a_file_that_is_not_json_is_a_schema_error(tmp_path):
    (tmp_path / "results.json").write_text('{"trainer": ')
    with pytest.raises(schema.SchemaError, match="malformed .*not JSON"):
        schema.read(tmp_path)


def current() -> dict:
    """version_1's run as this code writes it: with its task, truncation and test predictions."""
    return {**version_1(), "task": dataclasses.asdict(schema.TaskInfo()),
            "truncation": {"strategy": "head", "max_length": 64, "train": 0, "dev": {"validation": 0}},
            "test_predictions": None}


def mnli() -> dict:
    """A run on MNLI: the headline is matched accuracy; the mismatched dev set's metrics beside it."""
    run = current()
    run["task"] = {"name": "mnli", "title": "MNLI", "metrics": ["accuracy"], "headline": "accuracy",
                   "label_names": ["entailment", "neutral", "contradiction"], "text_columns": ["premise", "hypothesis"],
                   "dev_sets": ["matched", "mismatched"]}
    run["metrics"]["final"] = {"accuracy": 0.7, "f1": None, "loss": 0.6,
                               "other_dev_sets": {"mismatched": {"accuracy": 0.68, "f1": None, "loss": 0.65}}}
    return run


def test_a_task_metrics_and_other_dev_sets_round_trip(tmp_path):
    r = schema.read(tmp_path / "results.json") if schema.write(tmp_path, mnli()) else None
    assert r.task.name == "mnli" and r.headline == "accuracy" and r.score() == 0.7
    assert r.metrics.final.on("mismatched").accuracy == 0.68 and r.metrics.final.on(None).accuracy == 0.7
    assert r.metrics.final.on("nowhere").accuracy is None
    stsb = {**current(), "task": {**current()["task"], "name": "stsb", "metrics": ["pearson", "spearmanr"],
                                  "headline": "pearson"}}
    stsb["metrics"] = {"final": {"accuracy": None, "f1": None, "pearson": 0.81, "spearmanr": 0.8, "loss": 0.9}}
    assert schema.parse(stsb).score() == 0.81 and schema.parse(stsb).metrics.final.accuracy is None
    with pytest.raises(ValueError, match=r"metrics\.final\.other_dev_sets\.mismatched: undeclared key.*'acc'"):
        bad = mnli()
        bad["metrics"]["final"]["other_dev_sets"]["mismatched"] = {"acc": 0.6}
        schema.write(tmp_path, bad)


def test_files_from_before_tasks_read_as_sst2():
    r = schema.parse(version_1())
    assert r.task.name == "sst2" and r.headline == "accuracy" and r.score() == 0.8125
    assert r.score("after_prune") == 0.6 and r.accuracy_timeline[0].value() == 0.75


def test_write_refuses_an_undeclared_or_missing_key(tmp_path):
    with pytest.raises(ValueError, match="undeclared key.*'accuracy_at_end'"):
        schema.write(tmp_path, {**current(), "accuracy_at_end": 0.8})
    with pytest.raises(ValueError, match=r"results\.pruning: undeclared key.*'eb_found_at'"):
        schema.write(tmp_path, {**current(), "pruning": {**version_1()["pruning"], "eb_found_at": 3}})
    incomplete = current()
    del incomplete["cost"]
    with pytest.raises(ValueError, match="declared key.*'cost' missing"):
        schema.write(tmp_path, incomplete)
    assert not list(tmp_path.iterdir())     # nothing written


def test_round_trip(tmp_path):
    written = schema.write(tmp_path, current())
    assert written["schema_version"] == schema.SCHEMA_VERSION and not (tmp_path / "results.tmp").exists()
    assert json.loads((tmp_path / "results.json").read_text()) == written
    r = schema.read(tmp_path)
    assert r.schema_version == schema.SCHEMA_VERSION and r.raw == written
    old = schema.parse(current())          # the same content, as version 1, reads the same
    assert r == dataclasses.replace(old, schema_version=schema.SCHEMA_VERSION)
    dense = copy.deepcopy(current())    # a dense run: no "pruning", metrics of the final stage only
    del dense["pruning"]
    dense["metrics"] = {"final": dense["metrics"]["final"]}
    assert schema.read(tmp_path) != schema.parse(schema.write(tmp_path, dense))
    assert schema.read(tmp_path).pruning is None
