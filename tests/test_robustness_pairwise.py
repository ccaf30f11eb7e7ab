"""A robustness pass of a pairwise (cross-attention) method equals scoring the perturbed data from scratch:
reusing the clean image encodings changes nothing but the cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_xdim import CAPTIONS, IMG_DIM, REGIONS, build

from harness.eval.metrics.recall import full_recall
from harness.eval.perturb.spec import parse_perturb
from harness.eval.perturb.text import perturb_captions
from harness.eval.robustness import PRECOMPUTED, RobustnessRequest, robustness_pass
from harness.eval.scoring import encode_images, encode_texts, score_blocks, similarity_matrix

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pairwise_pass_equals_a_fresh_scoring_of_the_perturbed_captions():
    adapter = build()
    regions = torch.randn(len(CAPTIONS) // 5, REGIONS, IMG_DIM, generator=torch.Generator().manual_seed(3))
    owner = np.arange(len(CAPTIONS)) // 5
    img, txt = encode_images(adapter, regions), encode_texts(adapter, CAPTIONS)
    clean = score_blocks(adapter, img, txt)
    request = RobustnessRequest(parse_perturb("char_swap@5,shuffle@5,zoom_blur@1"), seed=4)
    rec = robustness_pass(adapter, regions, CAPTIONS, owner, clean_images=img, clean_texts=txt, clean_sims=clean,
                          request=request)
    for key, name in (("char_swap@5", "char_swap"), ("shuffle@5", "shuffle")):
        fresh = similarity_matrix(adapter, regions, perturb_captions(CAPTIONS, name, 5, seed=4))
        expect = full_recall(fresh, image_of_caption=owner)
        assert rec["perturbations"][key]["rsum"] == pytest.approx(expect["rsum"])
        assert rec["perturbations"][key]["t2i"]["r1"] == pytest.approx(expect["t2i"]["r1"])
    assert rec["perturbations"]["zoom_blur@1"] == {"name": "zoom_blur", "severity": 1, "modality": "image",
                                                    "level": "blur", "defined": False, "reason": PRECOMPUTED}
    assert rec["clean"]["rsum"] == pytest.approx(full_recall(clean, image_of_caption=owner)["rsum"])
