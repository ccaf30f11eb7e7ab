"""ESA's Self-Expanding triplet Loss (SEL).

The shared triplet loss in methods.common.triplet with hardnum x hardnum positive blocks: the two
region-masked views of an image and the two augmented copies of its caption are mutual positives;
each view is anchored on its hardest positive. VSE0 (sum over negatives) in the warm-up epochs,
hardest negative after.
"""

from __future__ import annotations

from methods.common.triplet import SelfExpandingTripletLoss, hardest_negative_at

__all__ = ["SelfExpandingTripletLoss", "hardest_negative_at"]
