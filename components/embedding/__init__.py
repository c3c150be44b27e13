"""Embeddings of every row by a pretrained backbone (the `embed` stage's output) and its reader."""

from trainwise.components.embedding.store import EMBEDDINGS, read_embeddings, write_embeddings

__all__ = ["EMBEDDINGS", "read_embeddings", "write_embeddings"]
