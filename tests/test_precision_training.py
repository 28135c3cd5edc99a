"""Training as researchers train on GPUs, checked on the CPU: bf16 autocast keeps masks exact and scores
finite; a step with non-finite gradients (the fp16 scaler's skip) adds nothing to any score and is
counted; gradient accumulation reads scores once per optimizer step, as one large batch would;
a compiled model goes through pruning and structured removal; bad hardware settings are one line."""
import functools
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, TrainingArguments

import bert
from activation_pruning import ActivationPruningTrainer
from conftest import TINY, refused, tiny_args, write_slice
from gradient_pruning import GradientCriterion, GradientPruningTrainer
from pruning import PruningConfig
from pruning.run import checkpoint as state_io, experiment
from pruning.run.tracking import ReportScalars, report_scalars
from slimming_pruning import SlimmingPruningTrainer
from undecayed_pruning import UndecayedPruningTrainer

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """320 train rows: 10 optimizer steps an epoch at 32 sentences a step, in micro-batches or not."""
    return write_slice(tmp_path_factory.mktemp("sst2-320"), 320, 100)


@pytest.fixture(scope="module")
def tiny_no_dropout(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "tiny-bert-no-dropout.json"
    path.write_text(json.dumps({"model_type": "bert", "vocab_size": 30522, "max_position_embeddings": 128,
                                **TINY, **NO_DROPOUT}))
    return path


def run(config_path, data, out, **overrides) -> dict:
    """One run of bert.py's experiment in this process; its results dict."""
    return experiment.run(experiment.configure(vars(bert), tiny_args(config_path, data, out, **overrides)), "bert.py")


def saved_masks(results: dict) -> tuple[dict, dict]:
    """(keep-masks, scores at pruning) from the run's masks file, each group's of its dense shape."""
    masks, scores, _ = state_io.read_run_masks(results["run_dir"])
    return masks, scores


# --- bf16 on the CPU (autocast) ---------------------------------------------------------------------
def test_bf16_weights_keeps_pruned_weights_exactly_zero_and_scores_finite(tiny_bert_config, data, tmp_path):
    results = run(tiny_bert_config, data, tmp_path, precision="bf16", trainer="gradient")
    assert results["config"]["PRECISION"] == "bf16" and results["pruning"]["skipped_steps"] == 0
    assert results["sparsity"] == pytest.approx(0.5, abs=1e-3)
    masks, scores = saved_masks(results)
    assert scores and all(torch.isfinite(s).all() for s in scores.values())
    weights = load_file(f"{results['run_dir']}/model/model.safetensors")
    for name, keep in masks.items():
        w = weights[name]
        assert w.dtype == torch.float32  # mixed precision: the weights stay float32, the matmuls run in bf16
        assert bool((w[~keep] == 0).all()) and bool((w[keep] != 0).all())
    assert math.isfinite(results["metrics"]["final"]["loss"])


def test_bf16_heads_and_neurons_are_removed_and_scores_finite(tiny_bert_config, data, tmp_path):
    results = run(tiny_bert_config, data, tmp_path, precision="bf16", trainer="slimming",
                  granularity="heads+neurons", head_rate=0.5, neuron_rate=0.5)
    structure = results["pruning"]["structure"]
    assert structure["heads_kept_per_layer"] == [1, 1] and sum(structure["neurons_kept_per_layer"]) == 64
    masks, scores = saved_masks(results)
    for name, keep in masks.items():  # removed units score -inf in the original space; the kept ones are finite
        assert torch.isfinite(scores[name][keep]).all()
    weights = load_file(f"{results['run_dir']}/model/model.safetensors")
    intermediate = [w for k, w in weights.items() if k.endswith("intermediate.dense.weight")]
    assert [w.shape[0] for w in intermediate] == structure["neurons_kept_per_layer"]  # removed, not zeroed
    query = [w for k, w in weights.items() if k.endswith("attention.self.query.weight")]
    assert [w.shape[0] for w in query] == [16, 16]  # one head of 16 dims left in each layer


# --- a step whose gradients are not finite --------------------------------------------------------
def tiny_trainer(trainer_class, tmp_path, granularity="weights"):
    config = AutoConfig.for_model("bert", vocab_size=100, max_position_embeddings=32, **TINY, **NO_DROPOUT)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", num_train_epochs=2.0)
    return trainer_class(model=model, args=args, pruning=PruningConfig(granularity=granularity))


def backward(trainer, seed: int) -> None:
    trainer.model.train()
    trainer.model.zero_grad()
    for c in trainer.criterion.extra_parameters():
        c.grad = None
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (4, 12), generator=g)
    trainer.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1])).loss.backward()


def score_state(trainer) -> dict:
    state = {k: v.clone() for k, v in trainer.criterion.state_dict().items()}
    state.update({f"grad/{i}": c.grad.clone() for i, c in enumerate(trainer.criterion.extra_parameters())})
    return state


@pytest.mark.parametrize("trainer_class,granularity", [(GradientPruningTrainer, "weights"),
                                                       (UndecayedPruningTrainer, "weights"),
                                                       (GradientPruningTrainer, "heads+neurons"),
                                                       (ActivationPruningTrainer, "heads+neurons"),
                                                       (SlimmingPruningTrainer, "heads+neurons")])
def test_a_step_with_inf_gradients_adds_nothing_to_the_scores_and_is_counted(trainer_class, granularity, tmp_path):
    trainer = tiny_trainer(trainer_class, tmp_path, granularity)
    backward(trainer, 0)
    trainer.read_gradients(observe=True)
    trainer.criterion.after_step()
    backward(trainer, 1)
    before = score_state(trainer)
    next(p for p in trainer.model.parameters() if p.grad is not None).grad[0].fill_(float("inf"))  # an overflow
    trainer.read_gradients(observe=True)  # what the scaler would skip
    after = score_state(trainer)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.run_state.skipped_steps == 1
    trainer.criterion.after_step()  # the skipped step's activations are dropped, not carried into the next
    backward(trainer, 2)
    trainer.read_gradients(observe=True)
    assert trainer.run_state.skipped_steps == 1 and all(torch.isfinite(s).all() for s in trainer.criterion.scores().values())


# --- gradient accumulation ------------------------------------------------------------------------
def test_accumulating_two_batches_of_16_reads_the_scores_of_one_batch_of_32(tiny_no_dropout, data, tmp_path,
                                                                            monkeypatch):
    observed = []
    original = GradientCriterion.observe
    monkeypatch.setattr(GradientCriterion, "observe", lambda self: (observed.append(1), original(self))[1])
    runs = {}
    for name, batch, accumulation in (("whole", 32, 1), ("accumulated", 16, 2)):
        observed.clear()
        results = run(tiny_no_dropout, data, tmp_path / name, trainer="gradient", batch_size=batch,
                      grad_accumulation=accumulation, eb_epsilon=1e-9)  # never settles: checks to the budget's end
        runs[name] = results, len(observed), saved_masks(results)[1]
    (whole, whole_observed, whole_scores), (acc, acc_observed, acc_scores) = runs["whole"], runs["accumulated"]
    assert whole["optimizer_steps"] == acc["optimizer_steps"] == 20
    assert whole_observed == acc_observed == whole["pruning"]["prune_step"] == 10  # once per optimizer step
    checks = [[c["step"] for c in h] for h in whole["pruning"]["distance_history"].values()]
    assert checks == [[c["step"] for c in h] for h in acc["pruning"]["distance_history"].values()] == [[2, 4, 6, 8, 10]]
    for name, s in whole_scores.items():
        assert torch.allclose(acc_scores[name], s, rtol=1e-3, atol=1e-6 * float(s.abs().max())), name
    # the cost series counts the real tokens of every micro-batch
    assert [c["tokens_trained"] for c in whole["cost_series"]] == [c["tokens_trained"] for c in acc["cost_series"]]
    losses = [[e["loss"] for e in r["log_history"] if "loss" in e] for r in (whole, acc)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)


# --- torch.compile ----------------------------------------------------------------------------------
def test_a_compiled_model_prunes_and_its_heads_and_neurons_are_removed(tiny_bert_config, data, tmp_path, monkeypatch):
    # aot_eager: HF's torch_compile wrapping, graph capture and recompilation after the shapes change, without
    # inductor's C++ builds (30 s per graph on 2 cores); the test takes about 35 s
    monkeypatch.setattr(experiment, "TrainingArguments",
                        functools.partial(TrainingArguments, torch_compile_backend="aot_eager"))
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    results = run(tiny_bert_config, data, tmp_path, compile=True, trainer="magnitude", granularity="heads+neurons",
                  head_rate=0.5, neuron_rate=0.5, retrain_epochs=0.5)
    assert counters["stats"]["unique_graphs"] > 0  # the model was compiled
    assert results["pruning"]["structure"]["heads_kept_per_layer"] == [1, 1]
    p = results["pruning"]
    assert results["optimizer_steps"] == p["prune_step"] + p["retrain_steps"] == 6 + 10  # retrained after removal
    assert math.isfinite(results["metrics"]["final"]["loss"])
    weights = load_file(f"{results['run_dir']}/model/model.safetensors")
    assert not any("_orig_mod" in k for k in weights)  # saved as the plain model


# --- REPORT_TO: what the integrations receive ---------------------------------------------------------
def test_integrations_log_the_cost_series_and_the_pruning_state(tmp_path):
    from transformers.integrations.integration_utils import TensorBoardCallback
    from transformers import TrainerControl, TrainerState

    class FakeTensorBoard(TensorBoardCallback):  # HF's class, without the tensorboard package
        def __init__(self):
            self.logged = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logged.append(dict(logs))

    trainer = tiny_trainer(GradientPruningTrainer, tmp_path)
    fake = FakeTensorBoard()
    trainer.callback_handler.callbacks.insert(0, fake)  # where HF registers its integrations: before ours
    report_scalars(trainer)
    kinds = [type(c) for c in trainer.callback_handler.callbacks]
    assert kinds[-2:] == [ReportScalars, FakeTensorBoard]
    state = TrainerState(global_step=4, log_history=[{"loss": 0.5, "step": 4, "train_flops": 12.0,
                                                      "tokens_trained": 100}])
    trainer.callback_handler.on_log(trainer.args, state, TrainerControl(), {"loss": 0.5})
    assert fake.logged == [{"loss": 0.5, "cost/train_flops": 12.0, "cost/tokens_trained": 100,
                            "pruning/sparsity": 0.0}]


# --- bad settings: one line each, exit status 2, nothing written ------------------------------------------


@pytest.mark.parametrize("setting,expected", [
    ("--precision=fp16", "PRECISION=fp16 needs a CUDA GPU"),
    ("--precision=fp8", "PRECISION='fp8': choose one of fp32, bf16, fp16"),
    ("--tf32=true", "TF32=True needs an Ampere or newer CUDA GPU, and this machine has none"),
    ("--grad_accumulation=0", "GRAD_ACCUMULATION must be an integer >= 1, got 0"),
    ("--max_grad_norm=-1", "MAX_GRAD_NORM must be >= 0 (0 = no clipping), got -1.0"),
    ("--dataloader_workers=-1", "DATALOADER_WORKERS must be an integer >= 0, got -1"),
    ("--attention=fast", "ATTENTION='fast' is not an attention implementation transformers offers"),
    ("--report_to=nonsense", "REPORT_TO='nonsense' is not an integration of HF's Trainer"),
])
def test_bad_hardware_settings_are_one_line(capsys, tiny_bert_config, data, tmp_path, setting, expected):
    if setting == "--precision=fp16" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = refused(capsys, [*tiny_args(tiny_bert_config, data, tmp_path / "out"), setting])
    assert expected in line and not (tmp_path / "out").exists()


def test_an_integration_that_is_not_installed_is_one_line(capsys, tiny_bert_config, data, tmp_path):
    from transformers.integrations.integration_utils import get_available_reporting_integrations
    if "tensorboard" in get_available_reporting_integrations():
        pytest.skip("tensorboard is installed here")
    line = refused(capsys, [*tiny_args(tiny_bert_config, data, tmp_path / "out"), "--report_to=tensorboard"])
    assert "REPORT_TO='tensorboard': its package is not installed (pip install tensorboard)" in line


def test_an_attention_the_model_cannot_use_here_is_one_line(capsys, tiny_bert_config, data, tmp_path):
    import importlib.util
    if importlib.util.find_spec("flash_attn"):
        pytest.skip("flash-attn is installed here")
    line = refused(capsys, [*tiny_args(tiny_bert_config, data, tmp_path / "out"), "--attention=flash_attention_2"])
    assert "ATTENTION='flash_attention_2' cannot be used with this model here" in line


def test_bf16_on_a_gpu_without_it_is_one_line(capsys, tiny_bert_config, data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    line = refused(capsys, [*tiny_args(tiny_bert_config, data, tmp_path / "out"), "--precision=bf16"])
    assert "PRECISION=bf16: this GPU (Tesla V100) does not support bfloat16" in line
