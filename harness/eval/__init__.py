"""Evaluation: the one evaluation path, scoring, the protocol table and the metrics."""
