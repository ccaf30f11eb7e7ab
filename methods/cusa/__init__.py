"""CUSA (AAAI 2024): CLIP fine-tuned with cross-modal and uni-modal soft-label alignment.

Modules: `config` (geometry, objectives, temperatures), `model` (CLIP + heads), `losses` (ITC, CSA,
USA), `official` (checkpoint container and yaml config), `data` (json splits, caption cleaning,
teacher image features), `teachers` (sentence-transformers text teacher), `adapter`, `demo_images`.
"""
