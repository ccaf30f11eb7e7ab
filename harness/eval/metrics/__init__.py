"""Evaluation protocols: pure functions of (similarity matrix or embeddings, ground truth)."""
