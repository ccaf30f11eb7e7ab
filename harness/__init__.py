"""itrbench harness: registry, data readers, scoring engine, metrics, results store, plans and reports."""

__version__ = "0.1.0"
