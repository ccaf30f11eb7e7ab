"""ESL: Enhanced Semantic Similarity Learning for image-text matching (TCSVT 2024), ESL-H and ESL-A."""

from methods.esl.adapter import ESLAdapter

__all__ = ["ESLAdapter"]
