"""A compress.py variant directory as a deployable artifact on its own: beside the model file(s), the
tokenizer (`tokenizer.json`, with the run's truncation length and padding set in it), `deploy.json` (label
names, the model's inputs, the runtime), `classify.py` (the loading example: numpy + tokenizers +
onnxruntime or openvino, no torch, nothing of this repository) and `README.md`, a short model card.

    python classify.py "a gripping, beautifully acted film"       # in the variant's directory
"""
from __future__ import annotations

import json
from pathlib import Path

from pruning.host import cpu_name
from pruning.run import model_card

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "deploy.json"
EXAMPLE_FILE = "classify.py"
CARD_FILE = "README.md"

# The loading example, written to classify.py and quoted in the card: keep it free of torch and the toolkit.
EXAMPLE = '''"""Classify sentences with the model in this directory, without torch or the toolkit that made it:
    pip install numpy tokenizers onnxruntime      # or openvino, for a model.xml
    python classify.py "a gripping, beautifully acted film" "a dull mess"
A sentence pair (a pair task) is given as "first<TAB>second"; a packed model (sparse.safetensors) also
needs the onnx and safetensors packages."""
import json
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


def load(directory=Path(__file__).resolve().parent, threads=2):
    """A function: list of texts -> (labels, logits); a regression's labels are its scores."""
    directory = Path(directory)
    meta = json.loads((directory / "deploy.json").read_text())
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))  # truncation and padding set in it
    if (directory / "model.xml").exists():
        import openvino as ov
        compiled = ov.Core().compile_model(str(directory / "model.xml"), "CPU", {"INFERENCE_NUM_THREADS": threads})
        names = [i.get_any_name() for i in compiled.inputs]
        run = lambda feed: compiled({k: feed[k] for k in names})[0]
    else:
        import onnxruntime as ort
        model = (directory / "model.onnx").read_bytes()
        if (directory / "sparse.safetensors").exists():  # bitmap-packed tensors, unpacked to dense here
            import onnx
            from onnx import numpy_helper
            from safetensors.numpy import load_file
            graph, packed = onnx.load_from_string(model), load_file(str(directory / "sparse.safetensors"))
            for name in sorted({k.rsplit("/", 1)[0] for k in packed}):
                shape = tuple(int(s) for s in packed[name + "/shape"])
                mask = np.unpackbits(packed[name + "/bitmap"], count=int(np.prod(shape))).astype(bool)
                dense = np.zeros(mask.size, dtype=packed[name + "/values"].dtype)
                dense[mask] = packed[name + "/values"]
                graph.graph.initializer.append(numpy_helper.from_array(dense.reshape(shape), name))
            model = graph.SerializeToString()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        run = lambda feed: session.run(None, {k: feed[k] for k in names})[0]

    def classify(texts):
        items = [tuple(t.split("\\t", 1)) if meta["pair"] and "\\t" in t else t for t in texts]
        encoded = tokenizer.encode_batch(items)
        feed = {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64)}
        logits = run(feed)  # the model takes the inputs it was exported with
        if meta["labels"] is None:
            return logits[:, 0].tolist(), logits
        return [meta["labels"][i] for i in logits.argmax(-1)], logits
    return classify


if __name__ == "__main__":
    texts = sys.argv[1:] or [line.rstrip("\\n") for line in sys.stdin if line.strip()]
    labels, _ = load()(texts)
    for label, text in zip(labels, texts):
        print(f"{label}\\t{text}")
'''


def write_files(directory: Path, tokenizer, labels: list[str] | None, inputs: tuple[str, ...], max_length: int,
                pair: bool) -> None:
    """Write the tokenizer, deploy.json and classify.py into a variant's `directory`. `tokenizer`: a HF
    fast tokenizer (its `backend_tokenizer` is saved, with truncation at `max_length` tokens and padding
    to the batch's longest row set in it); `labels`: class names by id (None for a regression); `inputs`:
    the model's input names (`pruning.deploy.runtimes.model_inputs`); `pair`: the task classifies sentence pairs.
    Raises ValueError for a tokenizer without a fast backend (nothing `tokenizers` can load)."""
    from tokenizers import Tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} has no fast (tokenizers) backend to ship with the model")
    plain = Tokenizer.from_str(backend.to_str())
    plain.enable_truncation(max_length=max_length)
    plain.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    directory = Path(directory)
    plain.save(str(directory / TOKENIZER_FILE))
    runtime = "openvino" if (directory / "model.xml").exists() else "onnxruntime"
    meta = {"labels": None if labels is None else list(labels), "inputs": list(inputs), "pair": pair,
            "max_length": max_length, "runtime": runtime}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    (directory / EXAMPLE_FILE).write_text(EXAMPLE)


def write_card(directory: Path, title: str, facts: list[tuple[str, str]], command: str, date: str,
               results=None, measured: dict | None = None) -> None:
    """README.md of a variant: the Hub's YAML metadata (`pruning.run.model_card.variant_metadata`: the runtime; with
    the run's `results` (RunResults) and the variant's `measured` entry of compress.json, also the dataset, the
    variant's own dev scores and, for the pruned model's variants, the base model), then `title`, a table of
    `facts` (name, value: what was pruned and quantized, the measured metric, speed, bytes, energy), the command
    and date that measured them, and the loading example. Written to a temporary file, then renamed into place."""
    directory = Path(directory)
    runtime = json.loads((directory / META_FILE).read_text())["runtime"]
    package = "openvino" if runtime == "openvino" else "onnxruntime"
    lines = [f"# {title}", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts] + [
        "", f"Measured by `{command}` on {date} ({cpu_name()}).", "",
        "## Use it", "", "Needs neither torch nor the toolkit that made it:", "", "```bash",
        f"pip install numpy tokenizers {package}",
        'python classify.py "a gripping, beautifully acted film" "a dull mess"', "```", "",
        "or from Python (`classify.py`, in this directory):", "", "```python", EXAMPLE.strip(), "```", "",
        "Files: the model (`model.onnx`, or `model.xml` + `model.bin`), `tokenizer.json` (truncation and "
        "padding set), `deploy.json` (label names, inputs), `classify.py`."]
    data = model_card.variant_metadata(runtime, title, results, measured)
    model_card.save(model_card.card_text(data, "\n".join(lines)), directory)
