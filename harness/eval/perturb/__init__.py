"""Seeded, offline perturbations of captions (`text`) and image files (`image`) for robustness passes."""
