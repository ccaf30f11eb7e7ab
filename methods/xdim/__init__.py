"""X-Dim: Unlocking the Power of Cross-Dimensional Semantic Dependency for Image-Text Matching (ACM MM 2023)."""

from methods.xdim.adapter import XDimAdapter

__all__ = ["XDimAdapter"]
