"""The phases of the two drivers, each on its own: experiment.run's (place_run, load_inputs, check_step_plan,
make_trainer) on a tiny model and a slice of SST-2, and compress.py's table order and comparison on hand-built
records whose answers are known."""
import pytest

import bert
import compress
from conftest import tiny_args
from pruning.run import experiment
from pruning.run.checks import validate
from pruning.settings import ConfigError


@pytest.fixture
def config(tiny_bert_config, sst2_slice, tmp_path):
    return experiment.configure(vars(bert), tiny_args(tiny_bert_config, sst2_slice, tmp_path, run_name="phases"))


def test_place_run_names_the_directory_and_creates_nothing(config, tmp_path):
    place = experiment.place_run(config, "bert.py")
    assert place.run_dir == tmp_path / "phases" and place.is_main and place.world == 1
    assert place.started_with["config"]["TRAINER"] == "magnitude" and not place.run_dir.exists()


def test_load_inputs_reads_the_task_subsets_and_tokenizes(config):
    inputs = experiment.load_inputs({**config, "TRAIN_SUBSET": 50}, validate(config))
    assert inputs.task.name == "sst2" and len(inputs.train_rows) == 50 and len(inputs.encoded["train"]) == 50
    assert len(inputs.dev) == 200 and set(inputs.truncation) == {"strategy", "max_length", "train", "dev"}
    assert inputs.model.config.num_labels == 2 and inputs.model.config.id2label[1] == "positive"


def test_load_inputs_refuses_a_subset_larger_than_the_data(config):
    with pytest.raises(ConfigError, match=r"TRAIN_SUBSET=999 asks for more examples than the 320"):
        experiment.load_inputs({**config, "TRAIN_SUBSET": 999}, validate(config))


def test_check_step_plan_refuses_a_search_whose_steps_all_fall_in_the_warm_up(config):
    short = {**config, "TRAINER": bert.GradientPruningTrainer, "WARMUP_RATIO": 0.49}  # HF: ceil(0.49 x 40) = 20 = the search
    pruning = validate(short)
    inputs = experiment.load_inputs(short, pruning)
    with pytest.raises(ConfigError, match="no step is left to score"):
        experiment.check_step_plan(short, pruning, inputs, world=1)
    experiment.check_step_plan(config, validate(config), inputs, world=1)  # the tiny run's own plan passes


def test_make_trainer_builds_a_pruning_trainer_with_its_cost_log(config):
    pruning = validate(config)
    inputs = experiment.load_inputs(config, pruning)
    place = experiment.place_run(config, "bert.py")
    trainer, cost = experiment.make_trainer(config, pruning, inputs, place, ())
    assert isinstance(trainer, bert.MagnitudePruningTrainer) and cost in trainer.callback_handler.callbacks
    assert cost.pruned_zeros == trainer.pruned_zeros and not (place.run_dir / "run_config.json").exists()  # announce writes it


def test_compress_rows_come_in_table_order():
    rows = {f"{w} {r} {p}": (None, r, w, p) for w, r, p in [
        ("pruned", "openvino", "int8"), ("dense", "onnxruntime", "int8"), ("pruned", "onnxruntime", "fp32+trim"),
        ("pruned", "pytorch", "fp32"), ("dense", "pytorch", "fp32"), ("pruned", "onnxruntime", "mixed"),
        ("pruned", "onnxruntime", "fp32")]}
    order = [label for label, _ in sorted(rows.items(), key=compress._table_position)]
    assert order == ["dense pytorch fp32", "pruned pytorch fp32", "dense onnxruntime int8", "pruned onnxruntime fp32",
                     "pruned onnxruntime mixed", "pruned openvino int8", "pruned onnxruntime fp32+trim"]


def test_compress_compare_measures_each_row_against_this_sittings_references():
    def row(model, bytes_, speed, acc, parameters=100):
        return {"model": model, "bytes": bytes_, "sentences_per_s": speed, "accuracy": acc, "parameters": parameters,
                "runtime": "X"}
    record = {"variants": {"dense · PyTorch fp32": row("dense", 400, 10.0, 0.90),
                           "dense · ORT fp32": row("dense", 400, 20.0, 0.90),
                           "dense · ORT int8": row("dense", 100, 40.0, 0.89),
                           "pruned · ORT int8": row("pruned", 50, 100.0, 0.885, parameters=50)}}
    job = compress.Job({"RUNTIME": "onnxruntime"}, None, None, None, [], (), None, None, None,
                       type("Task", (), {"headline": "accuracy"})(), None, None)
    compress.compare(job, record)
    pruned = record["variants"]["pruned · ORT int8"]
    assert record["fastest_dense"] == "dense · ORT int8" and record["compression_reference"] == "dense · ORT fp32"
    assert pruned["compression"] == 8.0 and pruned["vs_fastest_dense"] == 2.5 and pruned["bits_per_parameter"] == 8.0
    assert pruned["headline_vs_dense"] == pytest.approx(-0.015)
