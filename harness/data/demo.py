"""The embedded demo dataset: real COCO captions, SYNTHETIC image features generated from them.

Captions are the first 800 images (4000 captions) of the COCO Karpathy test split (CC BY 4.0; see
harness/assets/ATTRIBUTION.md). The image side is synthetic: every content word of the corpus gets a
fixed random "concept" direction; an image's regions are noisy copies of the concepts its own five
captions mention (most frequent first), plus background regions. So a model can learn a real
caption -> region mapping, but the numbers say nothing about real retrieval quality.

The split files are generated deterministically into a cache folder in the SCAN precomp layout
(`<split>_ims.npy`, `<split>_caps.txt`, `<split>_ids.txt`), so the regular readers load them.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from math import comb
from pathlib import Path

import numpy as np

from harness.core.paths import ASSETS_DIR
from harness.core.results import save_npy, write_text
from harness.data.demo_images import write_demo_split

ASSETS = ASSETS_DIR / "demo"
SPLITS = {"train": (0, 500), "dev": (500, 600), "test": (600, 800)}  # image index ranges
REGIONS, FEATURE_DIM = 12, 512
VERSION = "demo-v3"  # v3: concept ties broken by first mention (v2 depended on PYTHONHASHSEED)
STOPWORDS = frozenset(
    "a an the of on in at to with and is are it its this that there their while for from by as some two three "
    "one up down near next into out his her he she they them over under has have be being been other very".split())


def demo_captions() -> tuple[list[str], list[str]]:
    caps = (ASSETS / "captions.txt").read_text(encoding="utf-8").splitlines()
    ids = (ASSETS / "image_ids.txt").read_text().splitlines()
    if len(caps) != len(ids) or len(caps) % 5:
        raise RuntimeError(f"{ASSETS}: demo captions and ids are inconsistent ({len(caps)} vs {len(ids)})")
    return caps, ids


def content_words(caption: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", caption.lower()) if w not in STOPWORDS and len(w) > 2]


def concept_vector(word: str, dim: int = FEATURE_DIM) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def synthesize_regions(captions: list[str], rng: np.random.Generator, regions: int = REGIONS,
                       dim: int = FEATURE_DIM) -> np.ndarray:
    """Region features of one image from its captions: top concepts first, then background.

    A word counts once per caption; equally frequent words keep the order of their first mention (a
    dict, not a set, removes repeats), so the features never depend on the interpreter's hash seed."""
    counts = Counter(w for c in captions for w in dict.fromkeys(content_words(c)))
    words = [w for w, _ in sorted(counts.items(), key=lambda item: -item[1])[:regions]]
    out = 0.6 * rng.standard_normal((regions, dim)).astype(np.float32)
    for r, w in enumerate(words):
        out[r] += concept_vector(w, dim) * (1.0 + 0.25 * counts[w])
    return np.maximum(out, 0.0)  # non-negative like BUTD features


def build_demo(root: str | Path) -> Path:
    """Write the demo splits under `root/demo/precomp/` (idempotent); returns that folder."""
    folder = Path(root) / "demo" / "precomp"
    stamp = folder / "VERSION"
    if stamp.is_file() and stamp.read_text().strip() == VERSION:
        return folder
    caps, ids = demo_captions()
    rng = np.random.default_rng(1234)
    for split, (a, b) in SPLITS.items():
        feats = np.stack([synthesize_regions(caps[5 * i:5 * i + 5], rng) for i in range(a, b)])
        save_npy(folder / f"{split}_ims.npy", feats)
        write_text(folder / f"{split}_caps.txt", "\n".join(caps[5 * a:5 * b]) + "\n")
        write_text(folder / f"{split}_ids.txt", "\n".join(ids[5 * a:5 * b:5]) + "\n")
    write_text(stamp, VERSION + "\n")
    return folder


def build_demo_images(root: str | Path) -> Path:
    """Write the demo's raw-image form under `root/demo/cusa/` (CUSA/ALBEF json layout; idempotent).

    Small SYNTHETIC images drawn from each image's captions (harness.data.demo_images), same splits and
    captions as the region-feature form, for methods with a pixel tower."""
    folder = Path(root) / "demo" / "cusa"
    stamp = folder / "VERSION"
    if stamp.is_file() and stamp.read_text().strip() == VERSION:
        return folder
    caps, ids = demo_captions()
    for split, (a, b) in SPLITS.items():
        groups = [caps[5 * i:5 * i + 5] for i in range(a, b)]
        write_demo_split(folder, split, groups, image_ids=[f"demo_{i:06d}" for i in range(a, b)])
    write_text(stamp, VERSION + "\n")
    return folder


def chance_rsum(n_images: int, captions_per_image: int = 5) -> float:
    """Expected rsum of a random scorer: i2t hits if any of k positives is in the top K of k*N captions."""
    n_cap = captions_per_image * n_images
    total = 0.0
    for K in (1, 5, 10):
        # a gallery smaller than K holds every positive in the top K
        i2t = 1.0 if K >= n_cap else 1.0 - comb(n_cap - captions_per_image, K) / comb(n_cap, K)
        t2i = min(1.0, K / n_images)
        total += 100.0 * (i2t + t2i)
    return total
