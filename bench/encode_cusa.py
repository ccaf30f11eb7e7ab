"""CUSA caption encoding: text cut after each batch's longest end-of-text token vs the official 77 tokens.

    python bench/encode_cusa.py [--variant vitb32|vitl14_336] [--captions 128] [--batch 64] [--repeat 2]

The official evaluation runs CLIP's text tower on all 77 positions; the causal mask makes everything
after a caption's end-of-text token irrelevant to its feature, so itrbench cuts each batch after its
longest one. Same captions (CUSA's real example test json, after `pre_caption`), same model (random
weights of the real geometry: speed does not depend on them), same run; ours and full-length
alternate and each figure is the best of --repeat (the CPU may be shared). Also prints the largest
feature difference between the two.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_JSON = ROOT / "tests" / "data" / "cusa" / "new_test.json"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_cusa_text(variant: str = "vitb32", n_captions: int = 128, batch: int = 64, repeat: int = 2,
                    device: str = "cpu") -> dict[str, float]:
    """Captions/s with and without the end-of-text truncation (same run); prints and returns them."""
    from methods.cusa.adapter import CUSAAdapter

    captions = [row["caption"] for row in json.loads(EXAMPLE_JSON.read_text())][:n_captions]
    adapter = CUSAAdapter.build(variant, "coco", {"objective": "only_contrastive"}).to(device)
    adapter.model.eval()
    batches = [adapter.tokenize(captions[a:a + batch]).to(device) for a in range(0, len(captions), batch)]

    def run(truncate: bool) -> tuple[float, torch.Tensor]:
        adapter.truncate_text = truncate
        _sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            feats = torch.cat([adapter.encode_texts(b) for b in batches])
        _sync()
        return time.perf_counter() - t0, feats

    best = {True: float("inf"), False: float("inf")}
    feats = {}
    for _ in range(repeat):
        for truncate in (True, False):
            seconds, feats[truncate] = run(truncate)
            best[truncate] = min(best[truncate], seconds)
    ours, full = len(captions) / best[True], len(captions) / best[False]
    widths = [int(b.lengths.max()) for b in batches]
    diff = float((feats[True] - feats[False]).abs().max())
    print(f"CUSA {variant} text tower, {len(captions)} captions in batches of {batch} on {device} "
          f"(threads {torch.get_num_threads()}); truncated widths {widths} of {adapter.model.context_length}")
    print(f"  ours (cut at longest EOT) : {ours:9.1f} captions/s")
    print(f"  official-style (77 tokens): {full:9.1f} captions/s")
    print(f"  speed-up                  : {ours / full:9.2f}x   max |feature diff| {diff:.2e}")
    return {"ours_captions_per_s": ours, "official_captions_per_s": full, "ratio": ours / full, "max_abs_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="vitb32", choices=["vitb32", "vitl14_336"])
    parser.add_argument("--captions", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    bench_cusa_text(args.variant, args.captions, args.batch, args.repeat, args.device)


if __name__ == "__main__":
    main()
