"""VSL (SGRAF) scoring throughput: our blockwise engine vs the official shard loop, same run.

Real shapes: 36 regions x 1024 (encoded), sim_dim 256, captions of 12-16 tokens, random weights with
random batch-norm statistics. The official-style reference (tests/test_vsl_reference.py) scores one
100 x 100 shard (float64 buffers, float32 shard, one caption at a time, VisualSA once per shard); ours
scores a larger block through harness.eval.scoring.score_blocks with its default pairwise tiles, including
the global vectors that our encoders precompute. The two matrices are compared on the shared
100 x 100 sub-block. `--profile` adds a per-op profile of ours. Peak memory: bench/memory_vsl.py.

    python bench/scoring_vsl.py [--threads 2] [--images 128] [--captions 128] [--repeats 2] [--profile]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.api import PaddedFeatures  # noqa: E402
from harness.eval.scoring import DEFAULT_TILES, score_blocks  # noqa: E402
from methods.vsl.adapter import VSLAdapter  # noqa: E402
from methods.vsl.model import length_mask  # noqa: E402

EMBED, SIM, REGIONS = 1024, 256, 36


def reference_module():
    spec = importlib.util.spec_from_file_location("test_vsl_reference", ROOT / "tests" / "test_vsl_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_adapter(variant: str, seed: int) -> VSLAdapter:
    torch.manual_seed(seed)
    adapter = VSLAdapter.build(variant, "coco", dict(embed_size=EMBED, sim_dim=SIM))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in adapter.model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
        adapter.model.sim_enc.sim_eval_w.weight.mul_(30.0)  # spread the scores
    adapter.model.eval()
    return adapter


def encoded_inputs(n_img: int, n_cap: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    regions = torch.nn.functional.normalize(torch.randn(n_img, REGIONS, EMBED, generator=g).relu(), dim=-1)
    lengths = torch.randint(12, 17, (n_cap,), generator=g)
    words = torch.nn.functional.normalize(torch.randn(n_cap, 16, EMBED, generator=g), dim=-1)
    return regions, words * length_mask(lengths, 16)[..., None], lengths


def our_blocks(adapter: VSLAdapter, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor):
    """What encode_images / encode_texts hand to score (global vector in slot 0)."""
    head = adapter.model.sim_enc
    with torch.no_grad():
        img = torch.cat([head.image_global(regions)[:, None], regions], dim=1)
        glob = head.caption_global(words, length_mask(lengths, words.shape[1]))
        txt = PaddedFeatures(torch.cat([glob[:, None], words], dim=1), lengths + 1)
    return img, txt


def bench_variant(variant: str, ref, n_img: int, n_cap: int, repeats: int) -> dict:
    """Best of `repeats` alternating timings of the reference shard and of our block (shared machines)."""
    adapter = make_adapter(variant, seed=1)
    regions, words, lengths = encoded_inputs(max(n_img, 100), max(n_cap, 100), seed=2)
    sim_state = adapter.model.sim_enc.state_dict()
    img64, cap64 = regions[:100].double().numpy(), words[:100].double().numpy()
    ref_rate = our_rate = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        ref_sims = ref.shard_scores(sim_state, variant.upper(), img64, cap64, lengths[:100].tolist(), shard_size=100)
        ref_rate = max(ref_rate, 100 * 100 / (time.perf_counter() - t))
        t = time.perf_counter()
        img, txt = our_blocks(adapter, regions[:n_img], words[:n_cap], lengths[:n_cap])
        ours = score_blocks(adapter, img, txt)
        our_rate = max(our_rate, n_img * n_cap / (time.perf_counter() - t))
    diff = float(np.abs(ours[:100, :100] - ref_sims).max())
    return {"variant": variant, "ref": ref_rate, "ours": our_rate, "ratio": our_rate / ref_rate, "diff": diff,
            "std": float(ref_sims.std())}


def profile_ours(variant: str, n_img: int, n_cap: int) -> None:
    """torch.profiler table (self CPU time and FLOPs per op) of our engine on one block."""
    from torch.profiler import ProfilerActivity, profile

    adapter = make_adapter(variant, seed=1)
    regions, words, lengths = encoded_inputs(n_img, n_cap, seed=2)
    img, txt = our_blocks(adapter, regions, words, lengths)
    score_blocks(adapter, img[:8], txt[:8])  # warm-up
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        score_blocks(adapter, img, txt)
    print(f"profile of ours, {variant.upper()}, {n_img} x {n_cap} pairs:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--captions", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["sgr", "saf"])
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of ours")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ref = reference_module()
    print(f"torch {torch.__version__}, {args.threads} thread(s); ours: {args.images} x {args.captions} pairs "
          f"through score_blocks (tiles {DEFAULT_TILES['pairwise']}); reference: one official 100 x 100 shard; "
          f"best of {args.repeats} alternating runs")
    for variant in args.variants:
        r = bench_variant(variant, ref, args.images, args.captions, args.repeats)
        print(f"{variant.upper()}: reference {r['ref']:8.1f} pairs/s | ours {r['ours']:8.1f} pairs/s | "
              f"ratio {r['ratio']:.2f}x | max |diff| {r['diff']:.2e} (score std {r['std']:.3f})")
    if args.profile:
        for variant in args.variants:
            profile_ours(variant, args.images, args.captions)
    print("peak memory of a COCO 5K-shaped run: python bench/memory_vsl.py")


if __name__ == "__main__":
    main()
