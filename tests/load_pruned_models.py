"""Load saved heads+neurons models the way a user would, in a process that never imported the toolkit's code for
them: `python tests/load_pruned_models.py DIR...`, each DIR written by tests/test_families.py (a saved model plus
`expected.pt`: the in-memory model's logits on `batch`, and the batch).

Per directory: `AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)` must give logits
equal to the expected ones: within 1e-6 as loaded, and bit for bit once its weights sit in freshly allocated
memory (HF maps the safetensors file, and a weight at an offset that is not 64-byte aligned can take another
matmul path, which changes a rounding: seen on DeBERTa-v2's rel_embeddings, 2.4e-7); when DIR holds a tokenizer,
`AutoTokenizer.from_pretrained(DIR)` (no trust_remote_code) must load it. Prints "ok DIR CLASS" per directory;
any failure raises (exit status 1). stdin is closed, so a "Do you wish to run the custom code?" prompt fails
instead of waiting.
"""
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

sys.stdin = open(os.devnull)
for directory in map(Path, sys.argv[1:]):
    expected = torch.load(directory / "expected.pt")
    model = AutoModelForSequenceClassification.from_pretrained(directory, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__  # the saved copy
    with torch.no_grad():
        logits = model(**expected["batch"]).logits
        torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-6, msg=str(directory))
        for p in model.parameters():
            p.data = p.data.clone()
        logits = model(**expected["batch"]).logits
    assert torch.equal(logits, expected["logits"]), (directory, (logits - expected["logits"]).abs().max())
    if (directory / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(directory)
        assert tokenizer("a test")["input_ids"], directory
    print("ok", directory.name, type(model).__name__, flush=True)
