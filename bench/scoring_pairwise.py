"""Pairwise scoring throughput: ours (harness engine + adapter.score) vs an official-style per-pair loop.

For ESL-H, ESL-A (embed 512) and X-Dim (embed 1024) with random weights, real shapes (36 regions,
captions of 12-16 tokens). Ours: the image and caption sides are prepared once (as encode_images /
encode_texts do) and the matrix is scored through `harness.eval.scoring.score_blocks` (tiles 128 x 512).
Official style: the official `Sim_vec` algorithm per shard, one caption at a time against all images
of the shard, recomputing the caption side for every image (tests/test_esl_reference.py,
tests/test_xdim.py). The official style is timed on a sub-block (its first --ref-captions captions)
and both rates are reported per pair; the two matrices must agree on that sub-block within 1e-5.
X-Dim's ratio has a ceiling of about 3.6x in exact float32: per image and word the official loop does
2D^2 + 2RD multiply-adds and ours D^2/2 + 2RD (methods/xdim/model.py).

    python bench/scoring_pairwise.py                       # defaults sized for a 2-core CPU, < 3 min
    python bench/scoring_pairwise.py --captions 1000 --ref-captions 100 --methods xdim --device cuda
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_esl_reference import TINY_BERT, OfficialESLSimVec, l2n, shard_attn_scores  # noqa: E402
from test_xdim import OfficialXDimSimVec  # noqa: E402

from harness.api import PaddedFeatures  # noqa: E402
from harness.eval.scoring import score_blocks  # noqa: E402
from methods.esl import ESLAdapter  # noqa: E402
from methods.xdim import XDimAdapter  # noqa: E402

DEFAULT_CAPTIONS = {"esl-h": 1000, "esl-a": 1000, "xdim": 200}
DEFAULT_REF_CAPTIONS = {"esl-h": 40, "esl-a": 40, "xdim": 8}


def build(method: str, device: str):
    """An adapter with random (non-initial) head weights; the BERT is tiny (scoring never uses it)."""
    torch.manual_seed(0)
    if method == "xdim":
        adapter = XDimAdapter.build("bert", "coco", dict(embed_size=1024, bert=TINY_BERT))
    else:
        adapter = ESLAdapter.build(method[-1], "coco", dict(embed_size=512, bert=TINY_BERT))
    with torch.no_grad():
        for name, p in adapter.model.sim_vec.named_parameters():
            if "sim_eval" in name and method != "xdim":
                p.copy_(0.1 + 0.05 * torch.randn_like(p))
            elif p.numel() > 1:
                p.add_(0.02 * torch.randn_like(p))
    adapter.model.eval()
    return adapter.to(device)


def inputs(n_img: int, n_cap: int, dim: int, regions: int, words: tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = l2n(torch.randn(n_img, regions, dim, generator=g))
    lengths = torch.randint(words[0], words[1] + 1, (n_cap,), generator=g)
    cap = l2n(torch.randn(n_cap, int(lengths.max()), dim, generator=g))
    cap = cap * (torch.arange(cap.shape[1])[None, :] < lengths[:, None])[..., None]
    return img, cap, lengths


def reference(method: str, adapter, img: torch.Tensor, cap: torch.Tensor, lengths: torch.Tensor,
              shard: int) -> np.ndarray:
    state = {k: v.detach().cpu() for k, v in adapter.model.sim_vec.state_dict().items()}
    if method == "xdim":
        sim = OfficialXDimSimVec(state)
    else:
        sim = OfficialESLSimVec(state, heuristic=method == "esl-h", embed_size=512)
    return shard_attn_scores(sim, img.double().numpy(), cap.double().numpy(), lengths.numpy(), shard)


def ours(method: str, adapter, img: torch.Tensor, cap: torch.Tensor, lengths: torch.Tensor,
         device: str) -> np.ndarray:
    """Prepare each image and caption side once (ESL: levels, correspondences folded into the image side;
    X-Dim: the features themselves), then score every tile through the harness engine."""
    head = adapter.model.sim_vec
    words = (torch.arange(cap.shape[1])[None, :] < lengths[:, None])[..., None].to(device)
    with torch.no_grad():
        if method == "xdim":
            image_side, text_side = img.to(device), cap.to(device)
        else:
            image_side = torch.cat([head.image_side(img[a:a + 256].to(device)) for a in range(0, len(img), 256)])
            text_side = head.text_side(cap.to(device))
        text_side = text_side * words
    sims = score_blocks(adapter, image_side, PaddedFeatures(text_side, lengths.to(device)))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return sims


def timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process). On a shared CPU the CPU time is the
    steadier measure of the work done; both are reported."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="esl-h,esl-a,xdim")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--captions", type=int, default=None,
                        help="captions scored by ours (default: 1000 for ESL, 200 for X-Dim on CPU)")
    parser.add_argument("--ref-captions", type=int, default=None,
                        help="captions of the sub-block timed with the official-style loop "
                             "(default: 40 for ESL, 8 for X-Dim)")
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--words", default="12-16", help="caption lengths in tokens, a range")
    parser.add_argument("--shard", type=int, default=1000, help="official shard size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: steady timings on a shared CPU)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lo, hi = (int(x) for x in args.words.split("-"))
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.images} images x {args.regions} regions, captions of {lo}-{hi} tokens")
    failures = 0
    for method in args.methods.split(","):
        n_cap = args.captions or (DEFAULT_CAPTIONS[method] if args.device == "cpu" else 1000)
        n_ref = min(n_cap, args.ref_captions or DEFAULT_REF_CAPTIONS[method])
        adapter = build(method, args.device)
        dim = 1024 if method == "xdim" else 512
        img, cap, lengths = inputs(args.images, n_cap, dim, args.regions, (lo, hi))
        ours(method, adapter, img[:2], cap[:2], lengths[:2], args.device)  # warm-up (factor caches, kernels)
        sims, wall_ours, cpu_ours = timed(ours, method, adapter, img, cap, lengths, args.device)
        ref, wall_ref, cpu_ref = timed(reference, method, adapter, img, cap[:n_ref], lengths[:n_ref], args.shard)
        diff = float(np.abs(sims[:, :n_ref] - ref).max())
        pairs_ours, pairs_ref = args.images * n_cap, args.images * n_ref
        ok = diff <= 1e-5
        failures += not ok
        print(f"{method:6s} ours {args.images}x{n_cap}: {wall_ours:6.2f} s = {pairs_ours / wall_ours:9,.0f} pairs/s "
              f"(CPU time {pairs_ours / cpu_ours:9,.0f}) | official-style {args.images}x{n_ref}: {wall_ref:6.2f} s = "
              f"{pairs_ref / wall_ref:7,.0f} pairs/s (CPU time {pairs_ref / cpu_ref:7,.0f}) | ratio "
              f"{(pairs_ours / wall_ours) / (pairs_ref / wall_ref):5.1f}x (CPU time "
              f"{(pairs_ours / cpu_ours) / (pairs_ref / cpu_ref):5.1f}x) | max |diff| {diff:.1e} "
              f"{'ok' if ok else 'FAIL (> 1e-5)'}", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {peak:,.0f} MiB")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
