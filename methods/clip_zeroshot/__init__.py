"""Zero-shot CLIP through open_clip: the baseline row of every image-text retrieval table.

No training: a variant names an open_clip model and pretrained tag (`model.py`), its weights come from a
local file or from the user's open_clip cache and are never downloaded; the adapter (`adapter.py`) reads
raw-image datasets in the CUSA/ALBEF json layout, as CUSA does.
"""
