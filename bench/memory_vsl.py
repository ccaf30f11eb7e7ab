"""Peak memory of a COCO 5K-shaped VSL (SGRAF) evaluation: the packed caption store vs the old padded one.

Real dimensions: 5000 images x 36 regions x 2048 (a memory-mapped .npy, as harness.data.precomp loads
them), 25,000 real COCO captions (the demo's 4,000 Karpathy-test captions cycled, plus a few long ones
of about 50 tokens as in COCO testall), a randomly initialised VSL SGR model with the official sizes
(embed 1024, sim 256). Every image and caption is encoded; then score_blocks runs over the full 5000 x
25000 output with the default tiles, scoring the first few tiles for real and filling the others with
zeros (full CPU scoring takes hours), so every caption tile is sliced and the whole output is written.
Each store runs in its own process; the peak RSS (ru_maxrss) of each is printed. Stores:
- spilled: the engine's default (harness.eval.scoring.encode_texts): packed caption rows, those beyond
  TEXT_MEMORY_LIMIT in a temporary file read back per caption tile;
- packed: packed caption rows, all in memory;
- padded: the engine before (concat_blocks: every caption padded to the split's longest).

    python bench/memory_vsl.py [--stores spilled packed padded] [--real-tiles 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_IMAGES, N_CAPTIONS, REGIONS, IMG_DIM = 5000, 25000, 36, 2048
GB = 1e9


def write_regions(path: Path, n_images: int) -> None:
    """Random non-negative region features, written chunk by chunk (this process's memory is not measured)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_images, REGIONS, IMG_DIM))
    rng = np.random.default_rng(0)
    for a in range(0, n_images, 250):
        b = min(n_images, a + 250)
        arr[a:b] = np.maximum(rng.standard_normal((b - a, REGIONS, IMG_DIM), dtype=np.float32), 0)
    arr.flush()
    del arr


def coco_like_captions(n: int) -> list[str]:
    """Real COCO captions cycled to n, with a few long ones (4 captions joined, ~50 tokens)."""
    from harness.data.demo import demo_captions

    caps = demo_captions()[0]
    out = [caps[i % len(caps)] for i in range(n)]
    for k, j in enumerate(range(7, n, n // 5 + 1)):  # 5 long captions spread over the split
        out[j] = " and ".join(caps[4 * k + 100:4 * k + 104])
    return out


class TileProxy:
    """Scores the first `real` tiles with the adapter, the rest as zeros (memory, not time, is measured)."""

    scoring = "pairwise"

    def __init__(self, adapter, real: int) -> None:
        self.inner, self.model, self.left = adapter, adapter.model, real

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def score(self, image_block, text_block) -> torch.Tensor:
        if self.left > 0:
            self.left -= 1
            return self.inner.score(image_block, text_block)
        return torch.zeros(len(image_block), len(text_block))


def old_encode(adapter, images, captions, batch_size: int):
    """The engine before the packed store: lists of blocks, then concat_blocks (captions padded to the
    split's longest caption, images concatenated into a second copy)."""
    from harness.api import concat_blocks
    from harness.eval.scoring import eval_mode

    img_blocks, txt_blocks = [], []
    with eval_mode(adapter):
        for a in range(0, len(images), batch_size):
            img_blocks.append(adapter.encode_images(torch.from_numpy(np.array(images[a:a + batch_size]))))
        img = concat_blocks(img_blocks)
        del img_blocks
        for a in range(0, len(captions), batch_size):
            txt_blocks.append(adapter.encode_texts(adapter.tokenize(captions[a:a + batch_size])))
    return img, concat_blocks(txt_blocks)


def child(args: argparse.Namespace) -> None:
    from harness.api import PackedFeatures
    from harness.eval.scoring import TEXT_MEMORY_LIMIT, encode_images, encode_texts, score_blocks
    from methods.vsl.adapter import VSLAdapter

    torch.set_num_threads(args.threads)
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # noqa: E731 (KiB on Linux)
    start = peak()
    torch.manual_seed(0)
    adapter = VSLAdapter.build("sgr", "coco")  # official sizes: embed 1024, sim 256, word 300
    adapter.model.eval()
    images = np.load(args.regions, mmap_mode="r", allow_pickle=False)
    captions = coco_like_captions(args.captions)
    t0 = time.perf_counter()
    if args.store in ("spilled", "packed"):
        img = encode_images(adapter, images, batch_size=128)
        after_images = peak()
        limit = TEXT_MEMORY_LIMIT if args.store == "spilled" else None
        txt = encode_texts(adapter, captions, batch_size=128, memory_limit=limit)
        text_bytes = txt.nbytes if isinstance(txt, PackedFeatures) else txt.feats.numel() * 4
        text_memory = txt.memory_bytes if isinstance(txt, PackedFeatures) else text_bytes
    else:
        img, txt = old_encode(adapter, images, captions, batch_size=128)
        after_images = float("nan")
        text_bytes = text_memory = txt.feats.numel() * txt.feats.element_size()
    t1 = time.perf_counter()
    after_encoding = peak()
    sims = score_blocks(TileProxy(adapter, args.real_tiles), img, txt)
    t2 = time.perf_counter()
    lengths = txt.lengths
    print(json.dumps({
        "store": args.store, "start_gb": start, "after_images_gb": after_images, "after_encoding_gb": after_encoding,
        "peak_gb": peak(), "image_block_gb": img.numel() * img.element_size() / GB, "text_store_gb": text_bytes / GB,
        "text_memory_gb": text_memory / GB,
        "sims_gb": sims.nbytes / GB, "encode_s": t1 - t0, "score_s": t2 - t1, "mean_len": float(lengths.float().mean()),
        "max_len": int(lengths.max()), "nonzero_sims": int(np.count_nonzero(sims))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=["spilled", "packed", "padded"],
                        choices=["spilled", "packed", "padded"])
    parser.add_argument("--real-tiles", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=N_IMAGES)
    parser.add_argument("--captions", type=int, default=N_CAPTIONS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--regions", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.store:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        regions = Path(tmp) / "testall_ims.npy"
        write_regions(regions, args.images)
        print(f"COCO 5K-shaped run: {args.images} images x {REGIONS} x {IMG_DIM} (memmap), {args.captions} captions, "
              f"VSL SGR with embed 1024; {args.real_tiles} tile(s) scored for real, torch {torch.__version__}, "
              f"{args.threads} thread(s)")
        for store in args.stores:
            cmd = [sys.executable, __file__, "--store", store, "--regions", str(regions), "--threads",
                   str(args.threads), "--real-tiles", str(args.real_tiles), "--captions", str(args.captions)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(f"{store:>7}: peak RSS {r['peak_gb']:.2f} GB (after encoding {r['after_encoding_gb']:.2f}) | "
                  f"images {r['image_block_gb']:.2f} GB, captions {r['text_store_gb']:.2f} GB "
                  f"({r['text_memory_gb']:.2f} in memory) "
                  f"(mean {r['mean_len']:.1f}, max {r['max_len']} rows incl. the global slot), output "
                  f"{r['sims_gb']:.2f} GB | encode {r['encode_s']:.0f} s, tiles {r['score_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
