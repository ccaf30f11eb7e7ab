"""One command for a GPU: all five methods at COCO 5K shape in fp32, bf16 and fp16, written to one JSON.

    python bench/gpu.py --out gpu.json                        # CUDA, COCO 5K shape (5,000 x 25,000)
    python bench/gpu.py --device cpu --small --out small.json # tiny shapes, seconds (what the tests run)

For ESA (BiGRU), ESL-H, X-Dim, VSL (SGR) and CUSA (ViT-B/32) it builds the official geometry with random
weights, writes them as an official checkpoint and loads that file back through `load_official` (so the
weights are official-format), then for each precision:

- encode: every image and every caption once through `harness.eval.scoring.encode_images/encode_texts`
  (images/s, captions/s);
- score: through `harness.eval.scoring.score_blocks` with the default tiles (pairs/s). Embedding methods
  (ESA, CUSA) score the whole matrix. The pairwise methods (ESL, X-Dim, VSL) score a documented sample:
  the block of the first `--sample-images` images and their 5 captions each (whole tiles of the real
  engine; every query keeps its positives), and the JSON gives the full matrix's time extrapolated from
  that rate (`scoring.sampled`, `scoring.projected_full_s`);
- peak GPU memory of the encode and score (torch.cuda.max_memory_allocated; null on CPU);
- drift against fp32 on the scored block: the largest absolute difference and the queries whose rank
  of their positive changes (captions -> images, images -> captions, rank of the best positive).

fp16 needs CUDA (CPU autocast supports bf16 only): on CPU its entry is kept with null values and a
`skipped` reason; so is a precision that fails (a kernel without that dtype, out of memory), with the
error. Speed does not depend on the weights; the drift does a little (random weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.eval.precision import PRECISIONS  # noqa: E402
from harness.eval.scoring import encode_images, encode_texts, score_blocks  # noqa: E402

CAPTIONS_PER_IMAGE = 5
TINY_BERT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


@dataclass(frozen=True)
class Shape:
    images: int
    regions: int
    img_dim: int
    sample_images: int  # pairwise methods: scored block = these images x 5 captions each


FULL = Shape(images=5000, regions=36, img_dim=2048, sample_images=500)
SMALL = Shape(images=6, regions=4, img_dim=24, sample_images=4)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_methods(small: bool) -> dict[str, Callable[[], Any]]:
    """method label -> a function building its adapter (official geometry, or tiny with --small)."""
    from methods.cusa.adapter import CUSAAdapter
    from methods.cusa.config import TINY_CLIP as tiny_clip
    from methods.esa import ESAAdapter
    from methods.esl import ESLAdapter
    from methods.vsl import VSLAdapter
    from methods.xdim import XDimAdapter

    img_dim = SMALL.img_dim if small else FULL.img_dim
    regions = SMALL.regions if small else FULL.regions
    bert = TINY_BERT if small else "bert-base-uncased"
    return {
        "esa-bigru": lambda: ESAAdapter.build("bigru", "coco", dict(
            embed_size=32 if small else 1024, word_dim=16 if small else 300, img_dim=img_dim)),
        "esl-h": lambda: ESLAdapter.build("h", "coco", dict(embed_size=256 if small else 512, img_dim=img_dim,
                                                             bert=bert)),
        "xdim": lambda: XDimAdapter.build("bert", "coco", dict(embed_size=64 if small else 1024, img_dim=img_dim,
                                                               bert=bert)),
        "vsl-sgr": lambda: VSLAdapter.build("sgr", "coco", dict(
            embed_size=32 if small else 1024, sim_dim=16 if small else 256, word_dim=16 if small else 300,
            img_dim=img_dim, num_regions=regions)),
        "cusa-vitb32": lambda: CUSAAdapter.build("vitb32", "coco", dict(
            {"objective": "only_contrastive"}, **({"clip_config": tiny_clip} if small else {}))),
    }


def randomise(adapter: Any, seed: int) -> None:
    """Move every weight and batch-norm statistic away from its initial value (random, reproducible)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.model.parameters():
            if p.is_floating_point() and p.numel() > 1:
                p.add_(0.02 * p.detach().std().nan_to_num(0.02) * torch.randn(p.shape, generator=g))
        for m in adapter.model.modules():
            if isinstance(m, torch.nn.BatchNorm1d) and m.running_mean is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


def official_round_trip(adapter: Any, folder: Path) -> Any:
    """Write the adapter as an official checkpoint and load it back with the adapter class's reader."""
    path = folder / f"{adapter.method}-{adapter.variant}.pth"
    torch.save(adapter.official_checkpoint(), path)
    loaded = type(adapter).load_official(path, variant=adapter.variant, dataset="coco")
    path.unlink()
    return loaded


def make_images(adapter: Any, n: int, shape: Shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if adapter.image_input == "pixels":
        size = int(adapter.model.image_size)
        return torch.randn(n, 3, size, size, generator=g)
    return torch.rand(n, shape.regions, shape.img_dim, generator=g)  # BUTD features are non-negative


def make_captions(n: int, seed: int) -> list[str]:
    from methods.common.vocab import load_scan_vocab

    words = [w for w in list(load_scan_vocab("coco").word2idx)[4:] if w.isalpha()]
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(8, 17)))) for _ in range(n)]


def positive_ranks(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(caption -> image ranks of the positive image, image -> caption ranks of the best positive), 0-based,
    caption j belonging to image j // 5."""
    n_img, n_cap = sims.shape
    owner = np.arange(n_cap) // CAPTIONS_PER_IMAGE
    t2i = (sims > sims[owner, np.arange(n_cap)][None, :]).sum(axis=0)
    best = sims.reshape(n_img, n_img, CAPTIONS_PER_IMAGE)[np.arange(n_img), np.arange(n_img)].max(axis=1)
    i2t = (sims > best[:, None]).sum(axis=1)
    return t2i, i2t


def drift(sims: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    t2i, i2t = positive_ranks(sims)
    ref_t2i, ref_i2t = positive_ranks(reference)
    return {"max_abs_diff": float(np.abs(sims.astype(np.float64) - reference).max()),
            "t2i_rank_changes": int((t2i != ref_t2i).sum()), "t2i_queries": int(len(t2i)),
            "i2t_rank_changes": int((i2t != ref_i2t).sum()), "i2t_queries": int(len(i2t))}


def peak_gpu_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def run_precision(adapter: Any, images: torch.Tensor, captions: list[str], shape: Shape, device: str,
                  precision: str) -> tuple[dict[str, Any], np.ndarray]:
    """Encode everything, score the (sampled) block once; the timings and memory of one precision."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    warm_img = encode_images(adapter, images[:2], precision=precision)  # kernels, caches, autotuning
    warm_txt = encode_texts(adapter, captions[:2 * CAPTIONS_PER_IMAGE], precision=precision, memory_limit=None)
    score_blocks(adapter, warm_img, warm_txt, precision=precision)
    _sync(device)
    t0 = time.perf_counter()
    img = encode_images(adapter, images, precision=precision)
    _sync(device)
    t1 = time.perf_counter()
    txt = encode_texts(adapter, captions, precision=precision, memory_limit=None)
    _sync(device)
    t2 = time.perf_counter()
    sampled = adapter.scoring == "pairwise" and shape.sample_images < len(images)
    n_img = shape.sample_images if sampled else len(images)
    n_cap = n_img * CAPTIONS_PER_IMAGE
    sims = score_blocks(adapter, img[:n_img], txt[:n_cap], precision=precision)
    _sync(device)
    t3 = time.perf_counter()
    pairs, full_pairs = n_img * n_cap, len(images) * len(captions)
    rate = pairs / max(t3 - t2, 1e-9)
    return {
        "precision": precision, "skipped": None,
        "encode": {"images": len(images), "captions": len(captions), "image_s": t1 - t0, "caption_s": t2 - t1,
                   "images_per_s": len(images) / max(t1 - t0, 1e-9),
                   "captions_per_s": len(captions) / max(t2 - t1, 1e-9)},
        "scoring": {"images": n_img, "captions": n_cap, "pairs": pairs, "seconds": t3 - t2, "pairs_per_s": rate,
                    "sampled": sampled, "full_pairs": full_pairs, "projected_full_s": full_pairs / rate},
        "peak_gpu_mib": peak_gpu_mib(device),
    }, sims


def skipped_entry(precision: str, why: str) -> dict[str, Any]:
    return {"precision": precision, "skipped": why,
            "encode": {k: None for k in ("images", "captions", "image_s", "caption_s", "images_per_s",
                                         "captions_per_s")},
            "scoring": {k: None for k in ("images", "captions", "pairs", "seconds", "pairs_per_s", "sampled",
                                          "full_pairs", "projected_full_s")},
            "peak_gpu_mib": None, "drift_vs_fp32": None}


def bench_method(name: str, make: Callable[[], Any], shape: Shape, device: str, precisions: list[str],
                 folder: Path, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    built = make()
    randomise(built, seed)
    adapter = official_round_trip(built, folder).to(device)
    del built
    adapter.model.eval()
    images = make_images(adapter, shape.images, shape, seed)
    captions = make_captions(shape.images * CAPTIONS_PER_IMAGE, seed)
    entries, reference = [], None
    for precision in precisions:
        if precision == "fp16" and not device.startswith("cuda"):
            entries.append(skipped_entry(precision, "fp16 needs a CUDA device (CPU autocast supports bf16 only)"))
            continue
        try:
            entry, sims = run_precision(adapter, images, captions, shape, device, precision)
        except (RuntimeError, ValueError, NotImplementedError) as exc:  # e.g. a kernel without bf16, out of memory
            entries.append(skipped_entry(precision, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"))
            print(f"{name:12s} {precision}: {entries[-1]['skipped']}", flush=True)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            continue
        if precision == "fp32":
            reference = sims.astype(np.float64)
        entry["drift_vs_fp32"] = drift(sims, reference) if reference is not None else None
        entries.append(entry)
        print(f"{name:12s} {precision}: encode {entry['encode']['images_per_s']:9,.0f} images/s "
              f"{entry['encode']['captions_per_s']:9,.0f} captions/s | score {entry['scoring']['pairs_per_s']:13,.0f}"
              f" pairs/s ({'sampled ' if entry['scoring']['sampled'] else ''}{entry['scoring']['images']} x "
              f"{entry['scoring']['captions']}; full {entry['scoring']['projected_full_s']:8.1f} s) | max |diff| "
              f"{entry['drift_vs_fp32']['max_abs_diff'] if entry['drift_vs_fp32'] else float('nan'):.2e}",
              flush=True)
    return {"method": adapter.method, "variant": adapter.variant, "scoring_kind": adapter.scoring,
            "parameters": sum(p.numel() for p in adapter.model.parameters()), "precisions": entries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny shapes and models (seconds, CPU): a smoke run")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the five labels")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--sample-images", type=int, default=None,
                        help="pairwise methods: score this many images x 5 captions each (default 500; small 4)")
    parser.add_argument("--images", type=int, default=None, help="gallery images (default 5000: COCO 5K)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="gpu.json")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here; run with --device cpu --small for a smoke run", file=sys.stderr)
        return 2
    base = SMALL if args.small else FULL
    shape = Shape(images=args.images or base.images, regions=base.regions, img_dim=base.img_dim,
                  sample_images=args.sample_images or base.sample_images)
    methods = build_methods(args.small)
    chosen = args.methods.split(",") if args.methods else list(methods)
    unknown = [m for m in chosen if m not in methods]
    if unknown:
        print(f"bench/gpu.py: unknown method {unknown[0]!r}; valid: {', '.join(methods)}", file=sys.stderr)
        return 2
    precisions = args.precisions.split(",")
    if "fp32" not in precisions or any(p not in PRECISIONS for p in precisions):
        print(f"bench/gpu.py: --precisions must include fp32 and be among {', '.join(PRECISIONS)}", file=sys.stderr)
        return 2
    precisions = ["fp32"] + [p for p in precisions if p != "fp32"]
    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            results[name] = bench_method(name, methods[name], shape, args.device, precisions, Path(tmp), args.seed)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    report = {
        "command": " ".join(["bench/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device, "device_name": device_name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "small": args.small,
        "shape": {"images": shape.images, "captions": shape.images * CAPTIONS_PER_IMAGE, "regions": shape.regions,
                  "img_dim": shape.img_dim},
        "pairwise_sample": {"images": shape.sample_images, "captions": shape.sample_images * CAPTIONS_PER_IMAGE,
                            "how": "the block of the first images and their own captions, scored in the real "
                                   "engine's tiles; projected_full_s = all pairs / the block's pairs per second"},
        "weights": "random, official-format (written as an official checkpoint and read back with load_official)",
        "methods": results, "total_s": time.perf_counter() - start,
        "peak_host_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} ({report['total_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
