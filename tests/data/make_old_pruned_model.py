"""Run at commit 05c71de (the commit before the package was layered): a tiny heads+neurons BERT saved as the toolkit
saves one, with the logits it gives (tests/test_architecture.py runs it in that commit's tree, from git archive:
python make_old_pruned_model.py OUT, with the old tree as the working directory)."""
import json, sys
from pathlib import Path
import torch
from transformers import BertConfig, BertForSequenceClassification
from transformers.pytorch_utils import prune_linear_layer
sys.path.insert(0, ".")
from pruning.pruned_model import as_pruned_model

out = Path(sys.argv[1])
torch.manual_seed(0)
model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=64, vocab_size=100)).eval()
for layer, heads, neurons in zip(model.bert.encoder.layer, [[0, 2], [1, 2, 3]], [list(range(0, 40, 4)), list(range(64))]):
    a = layer.attention.self
    rows = torch.cat([torch.arange(h * 8, (h + 1) * 8) for h in heads])
    a.query, a.key, a.value = (prune_linear_layer(m, rows) for m in (a.query, a.key, a.value))
    layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, rows, dim=1)
    n = torch.tensor(neurons)
    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, n)
    layer.output.dense = prune_linear_layer(layer.output.dense, n, dim=1)
pruned = as_pruned_model(model)
pruned.save_pretrained(out)
ids = torch.tensor([[2, 5, 9, 14, 3, 0], [2, 7, 3, 0, 0, 0]])
with torch.no_grad():
    logits = pruned(input_ids=ids, attention_mask=(ids != 0).long()).logits
(out / "expected.json").write_text(json.dumps({"input_ids": ids.tolist(), "logits": logits.tolist(),
                                              "commit": "05c71de"}, indent=1) + "\n")
print(sorted(p.name for p in out.iterdir()), sum(p.stat().st_size for p in out.iterdir()))
