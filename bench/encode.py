"""Evaluation encoding throughput: our encode-once path vs the official per-caption loop, same run.

    python bench/encode.py [--method all|esa|cusa] [--images 40] [--text bigru|bert] [--batch 128] [--repeat 2]

The official evaluation walks the test set by caption and encodes each caption's image with it, so
every image is encoded 5 times; we encode each image once. Real shapes: 36 x 2048 BUTD regions,
embed size 1024, BiGRU with the COCO vocabulary and 300-d words (or bert-base-uncased). Weights
are random (speed does not depend on them). Prints images/s and captions/s of both and the ratio;
each figure is the best of --repeat runs, ours and official-style alternating (the CPU may be shared).

CUSA (bench/encode_cusa.py): captions/s of the CLIP text tower cut after each batch's longest end-of-text
token (ours) vs the official fixed 77 positions, same captions and weights (real ViT-B/32 geometry), and the
largest feature difference. `--method all` (default) runs every encoder in one command.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

CAPTIONS_PER_IMAGE = 5


def synthetic_captions(n: int, words: list[str], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(8, 17)))) for _ in range(n)]


def timed(fn: Callable[[], object]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_esa(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """(label, ours per second, official-style per second) for images and captions."""
    from methods.esa import ESAAdapter

    options = {"embed_size": 1024, "img_dim": 2048, "word_dim": 300}
    adapter = ESAAdapter.build(args.text, "coco", options).to(args.device)
    adapter.model.eval()
    n_img, n_cap, bs = args.images, args.images * CAPTIONS_PER_IMAGE, args.batch
    images = np.maximum(np.random.default_rng(0).standard_normal((n_img, 36, 2048), dtype=np.float32), 0)
    words = [w for w in load_words() if w.isalpha()]
    captions = synthetic_captions(n_cap, words)
    token_batches = [adapter.tokenize(captions[a:a + bs]) for a in range(0, n_cap, bs)]  # outside the timing

    def ours_images() -> None:
        for a in range(0, n_img, bs):
            adapter.encode_images(images[a:a + bs])

    def ours_captions() -> None:
        for tokens in token_batches:
            adapter.encode_texts(tokens)

    def official_loop() -> tuple[float, float]:
        """Per-caption batches; each caption brings its image (caption j -> image j // 5)."""
        t_img = t_cap = 0.0
        for start, tokens in zip(range(0, n_cap, bs), token_batches):
            ids = np.arange(start, min(start + bs, n_cap))
            batch_images = torch.from_numpy(images[ids // CAPTIONS_PER_IMAGE])
            t_img += timed(lambda: adapter.encode_images(batch_images))  # noqa: B023
            t_cap += timed(lambda: adapter.encode_texts(tokens))  # noqa: B023
        return t_img, t_cap

    adapter.encode_images(images[:2])  # warm-up
    adapter.encode_texts(token_batches[0][:2])
    best = {"ours_img": np.inf, "ours_cap": np.inf, "ref_img": np.inf, "ref_cap": np.inf}
    for _ in range(args.repeat):
        best["ours_img"] = min(best["ours_img"], timed(ours_images))
        best["ours_cap"] = min(best["ours_cap"], timed(ours_captions))
        ref_img, ref_cap = official_loop()
        best["ref_img"], best["ref_cap"] = min(best["ref_img"], ref_img), min(best["ref_cap"], ref_cap)
    return [("images", n_img / best["ours_img"], n_img / best["ref_img"]),
            ("captions", n_cap / best["ours_cap"], n_cap / best["ref_cap"])]


def load_words() -> list[str]:
    from methods.common.vocab import load_scan_vocab

    return list(load_scan_vocab("coco").word2idx)[4:]


def bench_cusa(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """CUSA captions/s with the end-of-text truncation (ours) and at the official fixed 77 tokens, same run."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is a folder of scripts, not a package
    from encode_cusa import bench_cusa_text

    r = bench_cusa_text(args.cusa_variant, n_captions=args.images * CAPTIONS_PER_IMAGE, batch=args.batch,
                        repeat=args.repeat, device=args.device)
    return [("captions", r["ours_captions_per_s"], r["official_captions_per_s"])]


BENCHES = {"esa": bench_esa, "cusa": bench_cusa}
LABELS = {"esa": lambda a: f"esa ({a.text})", "cusa": lambda a: f"cusa ({a.cusa_variant}, text cut at EOT vs 77)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="all", choices=["all", *sorted(BENCHES)])
    ap.add_argument("--cusa-variant", default="vitb32", choices=("vitb32", "vitl14_336"))
    ap.add_argument("--images", type=int, default=40, help="test images (captions: 5 per image)")
    ap.add_argument("--text", default="bigru", choices=("bigru", "bert"))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = sorted(BENCHES) if args.method == "all" else [args.method]
    results = {m: BENCHES[m](args) for m in methods}
    print(f"{args.images} images x {CAPTIONS_PER_IMAGE} captions, batch {args.batch}, {args.device}, "
          f"{torch.get_num_threads()} threads, best of {args.repeat}")
    print(f"{'encoder':44s} {'':10s} {'ours /s':>12s} {'official-style /s':>18s} {'ratio':>8s}")
    for m in methods:
        for label, ours, ref in results[m]:
            print(f"{LABELS[m](args):44s} {label:10s} {ours:12.1f} {ref:18.1f} {ours / ref:7.2f}x")


if __name__ == "__main__":
    main()
