"""The generated demo data is the same under any PYTHONHASHSEED (it decides set order and Counter ties)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from harness.data.demo import concept_vector, synthesize_regions

ROOT = Path(__file__).resolve().parents[1]
BUILD = ("import sys\n"
         "from harness.data.demo import build_demo, build_demo_images\n"
         "build_demo(sys.argv[1])\n"
         "build_demo_images(sys.argv[1])\n")


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_files_are_identical_under_different_hash_seeds(tmp_path):
    built = {}
    for seed in ("0", "12345"):
        out = tmp_path / f"seed{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", BUILD, str(out)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        built[seed] = _digests(out)
    assert len(built["0"]) > 800  # features, captions and ids of 3 splits, 800 images, json, teacher features
    assert built["0"] == built["12345"]


def test_equally_frequent_concepts_keep_the_order_of_their_first_mention():
    # every content word is mentioned once: all tie; regions follow the caption's word order
    a = synthesize_regions(["zebra giraffe elephant", "", "", "", ""], np.random.default_rng(0), regions=3, dim=4)
    noise = 0.6 * np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    expected = np.maximum(noise + np.stack([concept_vector(w, 4) * 1.25 for w in ("zebra", "giraffe", "elephant")]),
                          0.0)
    np.testing.assert_array_equal(a, expected)
