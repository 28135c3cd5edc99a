"""Vocabulary trimming: keep the word embeddings of the tokens a task's training data uses (TextPruner's
vocabulary pruning, Yang et al. 2022), so a model stops paying for the rows it never reads.

The tokenizer is left as it is, byte for byte, and a remap table goes in front of the embedding: old id ->
new row, every id the training data never produced -> the row of the unknown token ([UNK], <unk>). The
table is part of the model (the first Gather of the exported graph), so a deployed artifact still loads its
tokenizer with plain `tokenizers` and feeds its ids straight to the model. TextPruner instead rebuilds the
tokenizer's vocabulary; that would not map unseen tokens to the unknown token: WordPiece over a smaller
vocabulary splits an unseen word into smaller seen pieces, and a BPE vocabulary cannot lose a token that
its merges build. With the table, a sentence whose tokens were all seen gets exactly the logits of the
untrimmed model, and any other gets those of the untrimmed model with its unseen tokens replaced by the
unknown token. The table costs 4 bytes per original token (int32): 122 KB for BERT's 30,522.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn


class RemappedEmbedding(nn.Module):
    """An nn.Embedding restricted to the rows `keep` (original ids, sorted ascending): input ids (any shape,
    original vocabulary) -> embeddings (..., dim). `remap` (int32, original vocab size) holds each original
    id's new row; ids outside `keep` get the row of `unk_id`, which must be kept."""

    def __init__(self, embedding: nn.Embedding, keep: np.ndarray, unk_id: int):
        super().__init__()
        keep = np.asarray(keep, dtype=np.int64)
        if unk_id not in set(keep.tolist()):
            raise ValueError(f"the unknown token's id {unk_id} must be among the kept ids")
        vocab = embedding.num_embeddings
        if keep.min() < 0 or keep.max() >= vocab or (np.diff(keep) <= 0).any():
            raise ValueError(f"kept ids must be distinct, sorted and within the vocabulary of {vocab}")
        remap = np.full(vocab, int(np.searchsorted(keep, unk_id)), dtype=np.int32)
        remap[keep] = np.arange(len(keep), dtype=np.int32)
        self.register_buffer("remap", torch.from_numpy(remap))
        padding = embedding.padding_idx
        new_padding = int(remap[padding]) if padding is not None and padding in set(keep.tolist()) else None
        self.embedding = nn.Embedding(len(keep), embedding.embedding_dim, padding_idx=new_padding)
        with torch.no_grad():
            self.embedding.weight.copy_(embedding.weight[torch.from_numpy(keep)])
        self.original_vocab_size = vocab

    @property
    def weight(self):
        return self.embedding.weight

    def forward(self, input_ids):
        return self.embedding(self.remap[input_ids])


def seen_ids(token_ids: Iterable[Iterable[int]], special_ids: Iterable[int], vocab_size: int) -> np.ndarray:
    """The sorted distinct ids in `token_ids` (the tokenized training rows) and `special_ids` (the
    tokenizer's special tokens: always kept, a deployed model meets them in every sentence). Raises
    ValueError for an id outside [0, vocab_size)."""
    seen = set(int(s) for s in special_ids)
    for row in token_ids:
        seen.update(int(t) for t in row)
    keep = np.asarray(sorted(seen), dtype=np.int64)
    if len(keep) and (keep[0] < 0 or keep[-1] >= vocab_size):
        raise ValueError(f"token ids run outside the model's vocabulary of {vocab_size}: {keep[0]}..{keep[-1]}")
    return keep


def trim_vocabulary(model, keep: np.ndarray, unk_id: int):
    """`model` (a HF model, changed in place and returned) with its input word embeddings restricted to
    `keep` behind a remap table (`RemappedEmbedding`). Raises ValueError as RemappedEmbedding does."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise ValueError(f"cannot trim a {type(embedding).__name__}: the input embeddings are not an nn.Embedding")
    model.set_input_embeddings(RemappedEmbedding(embedding, keep, unk_id))
    return model
