"""Peak RSS and wall time of a streamed evaluation (`evaluate --store-matrix never`) at 20,000 x 100,000.

A stub embedding adapter (tests/stub_method.py: fixed random embeddings of 16 dims, an official-format
checkpoint) on a SCAN-precomp split of 20,000 images (1 region of 8 dims) with 5 captions each. The CLI
runs in its own process (ru_maxrss of that child is the measure). The dense float32 matrix would be 8 GB;
the target is a peak RSS below 3 GB. With `--store-matrix always` at the same shape the matrix alone is 8 GB
(not run by default).

    python bench/streaming.py [--images 20000] [--mode never] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

REGISTRY = """methods:
  stub:
    title: Stub (fixed random embeddings)
    adapter: stub_method:StubAdapter
    recipes: {default: {epochs: 1}}
    variants:
      a:
        description: the stub
        options: {img_dim: 8}
        checkpoints: {big: {url: "https://example.org/stub", files: [stub.pth]}}
datasets:
  big:
    description: a 20K-image gallery
    split: test
    protocols: [recall]
    images: null
    captions_per_image: 5
    layout: precomp
    feature_dim: 8
"""


def run(images: int, mode: str, threads: int, tiles: str | None) -> dict:
    from stub_method import write_checkpoint, write_split

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_split(tmp / "data" / "big" / "precomp", "test", images)
        ck = write_checkpoint(tmp / "stub.pth")
        (tmp / "reg.yaml").write_text(REGISTRY)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, str(ROOT / "run_all.py"), "evaluate", "--registry", str(tmp / "reg.yaml"),
               "--method", "stub", "--variant", "a", "--checkpoint", str(ck), "--data-root", str(tmp / "data"),
               "--dataset", "big", "--save-sims", str(tmp / "out" / "sims.npy"), "--json", str(tmp / "m.json"),
               "--store-matrix", mode, *(["--tiles", tiles] if tiles else [])]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        result = json.loads((tmp / "m.json").read_text())
        ranks = tmp / "out" / "sims.ranks.npz"
        return {"images": images, "captions": 5 * images, "store_matrix": mode, "threads": threads,
                "wall_seconds": round(wall, 1), "peak_rss_mb": round(peak_mb, 1),
                "dense_matrix_mb": round(4 * images * 5 * images / 2**20, 1),
                "rank_summary_mb": round(ranks.stat().st_size / 2**20, 1) if ranks.is_file() else None,
                "scoring_seconds": round(result["efficiency"]["scoring_seconds"], 1),
                "rsum": result["metrics"]["recall"]["rsum"], "target_peak_rss_mb": 3000}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--mode", default="never", choices=("never", "always", "auto"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiles", default=None, help="IMAGES,CAPTIONS (default: the engine's embedding tiles)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = run(args.images, args.mode, args.threads, args.tiles)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
