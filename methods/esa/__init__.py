"""ESA: External Space Attention Aggregation for image-text retrieval (TCSVT 2023)."""

from methods.esa.adapter import ESAAdapter

__all__ = ["ESAAdapter"]
