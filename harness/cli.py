"""Command line: `run_all.py [run] --methods ... --dataset ...`, evaluate, metrics, check-data, report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from harness.data.precomp import DataError
from harness.metrics.recall import MatrixError
from harness.precision import PRECISIONS
from harness.registry import RegistryError

console = Console(stderr=False)
SUBCOMMANDS = ("run", "evaluate", "metrics", "check-data", "report")
USER_ERRORS: tuple[type[BaseException], ...] = (RegistryError, DataError, MatrixError, FileNotFoundError, ValueError)


def load_sims(path: str | Path) -> np.ndarray:
    """A similarity matrix from .npy (array) or .h5/.hdf5 (dataset 'sims')."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such similarity matrix file")
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            if "sims" not in f:
                raise ValueError(f"{path}: HDF5 file has no 'sims' dataset (has {list(f)})")
            return f["sims"][...]
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{path}: not a plain .npy array ({exc}); official results_*.npy pickles must be "
                         "converted first") from exc
    return arr


def recall_table(metrics: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    for col in ("protocol", "direction", "R@1", "R@5", "R@10", "medr", "meanr", "tie-affected"):
        table.add_column(col, justify="right" if col not in ("protocol", "direction") else "left")
    for name, m in metrics.items():
        if not isinstance(m, dict) or "i2t" not in m or "r1" not in m.get("i2t", {}):
            continue
        for d, label in (("i2t", "image->text"), ("t2i", "text->image")):
            x = m[d]
            table.add_row(name, label, f"{x['r1']:.2f}", f"{x['r5']:.2f}", f"{x['r10']:.2f}", f"{x['medr']:.1f}",
                          f"{x['meanr']:.2f}", str(x.get("tie_affected_queries", "")))
        table.add_row(name, "rsum", f"{m['rsum']:.2f}", "", "", "", "", "", end_section=True)
    return table


def protocol_summary(result: dict[str, Any], title: str) -> Table:
    """A two-column table of the per-direction numbers of an ECCV / CxC result."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for direction in ("i2t", "t2i", "t2t", "i2i"):
        block = result.get(direction)
        if not isinstance(block, dict):
            continue
        if block.get("defined") is False:
            table.add_row(f"{direction}", f"not defined: {block.get('reason', '')}")
            continue
        for key, value in block.items():
            if isinstance(value, (int, float)):
                table.add_row(f"{direction} {key}", f"{value:.2f}")
    return table


def image_retrieval_table(result: dict[str, Any]) -> Table:
    """Image retrieval R@1 per set (and the mean), or why it is not defined."""
    table = Table(title="image retrieval (uni-modal image head)")
    table.add_column("set")
    table.add_column("R@1", justify="right")
    if result.get("defined") is False:
        table.add_row("all", f"not defined: {result.get('reason', '')}")
        return table
    for name, value in result.get("r1", {}).items():
        table.add_row(name, f"{value:.2f}")
    for name, why in (result.get("missing") or {}).items():
        table.add_row(name, f"not evaluated: {why}")
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="itrbench", description="Image-text retrieval reproducibility harness")
    sub = p.add_subparsers(dest="command")

    run = sub.add_parser("run", help="plan and run jobs (the default command)")
    run.add_argument("--methods", required=True, help="comma-separated method names (e.g. esa,xdim)")
    run.add_argument("--variants", default=None, help="comma-separated variants (default: all of each method)")
    run.add_argument("--dataset", required=True)
    run.add_argument("--stage", choices=("train", "evaluate", "all"), default="all")
    run.add_argument("--seeds", default="0")
    run.add_argument("--data-root", default="data")
    run.add_argument("--checkpoint-dir", default="checkpoints")
    run.add_argument("--results", default="results")
    run.add_argument("--reports", default="reports")
    run.add_argument("--executor", choices=("inline", "local", "slurm"), default="inline")
    run.add_argument("--device", default=None)
    run.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                     help="override a training-recipe key, repeatable (YAML value; part of the jobs' identity), e.g. "
                          "--set cusa.clip_weights=/models/ViT-B-32-openai.bin --set epochs=2")
    run.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="evaluations encode and score under autocast (bf16 / fp16 on CUDA); a non-fp32 run is its "
                          "own job (eval-<precision>) and report row")
    run.add_argument("--force", action="store_true", help="rerun finished jobs")
    run.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    run.add_argument("--gpus", type=int, default=None,
                     help="processes (GPUs) per training job, data-parallel (default: the recipe's `gpus`)")
    run.add_argument("--executor-opt", action="append", default=[], metavar="KEY=VALUE",
                     help="executor setting, repeatable: local gpus=0,1 workers=N; slurm partition=, account=, "
                          "qos=, constraint=, timeout_min=, cpus_per_task=, mem_gb=, array_parallelism=")
    run.add_argument("--registry", default=None, help="registry file to use instead of the project's")
    run.add_argument("--checkpoint-minutes", type=float, default=15.0,
                     help="mid-epoch training checkpoint interval in minutes (0: epoch ends only)")
    run.add_argument("--checkpoint-steps", type=int, default=None, help="also checkpoint every N steps")
    run.add_argument("--tiles", default=None, metavar="IMAGES,CAPTIONS",
                     help="scoring tile size (default: per scoring kind); smaller tiles use less memory")
    run.add_argument("--sts-root", default=None, help="SentEval data folder: adds STS to COCO evaluations")
    run.add_argument("--image-retrieval-root", default=None,
                     help="CUB/SOP/In-shop/iNaturalist folder: adds image retrieval (uni-modal image head) to COCO "
                          "evaluations")

    ev = sub.add_parser("evaluate", help="evaluate official checkpoints on a data split")
    ev.add_argument("--method", required=True)
    ev.add_argument("--variant", required=True)
    ev.add_argument("--checkpoint", action="append", required=True,
                    help="checkpoint file; repeat for ensembles (one per member, in registry order)")
    ev.add_argument("--data-root", required=True)
    ev.add_argument("--split", default=None, help="split name (default: the dataset's test split)")
    ev.add_argument("--dataset", default=None)
    ev.add_argument("--save-sims", default=None, help="write the images x captions matrix (.npy, float32)")
    ev.add_argument("--json", default=None, help="write the metrics as JSON")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="encode and score under autocast (bf16 / fp16 on CUDA); fp32 is exact")
    ev.add_argument("--cache-dir", default=None, help="tile cache folder (resume an interrupted scoring)")
    ev.add_argument("--sts-root", default=None, help="SentEval data folder: also evaluate STS (uni-modal text)")
    ev.add_argument("--image-retrieval-root", default=None,
                    help="CUB/SOP/In-shop/iNaturalist folder (check-data --dataset image_retrieval): also evaluate "
                         "image retrieval R@1 with the uni-modal image head")
    ev.add_argument("--recall-only", action="store_true", help="skip ECCV / CxC / STS / image retrieval")

    me = sub.add_parser("metrics", help="metrics of a saved similarity matrix")
    me.add_argument("--sims", required=True)
    me.add_argument("--protocol", required=True, choices=("coco5k", "coco1k", "f30k1k", "recall", "eccv", "cxc"))
    me.add_argument("--json", default=None)
    me.add_argument("--data-root", default=None, help="folder with testall_ids.txt / testall_capids.txt (eccv, cxc)")

    cd = sub.add_parser("check-data", help="validate a data folder and name every problem")
    cd.add_argument("--dataset", required=True, help="coco, f30k, demo, senteval or image_retrieval")
    cd.add_argument("--layout", choices=("precomp", "cusa_json"), default=None,
                    help="cusa_json: CUSA/ALBEF json + images (pixel methods)")
    cd.add_argument("--data-root", required=True)
    cd.add_argument("--splits", default=None, help="comma-separated splits (default: the dataset's test split)")

    rp = sub.add_parser("report", help="render reports/*.md from results/")
    rp.add_argument("--results", default="results")
    rp.add_argument("--reports", default="reports")
    rp.add_argument("--paper", default=None)
    rp.add_argument("--dataset", default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    handler = {"run": cmd_run, "evaluate": cmd_evaluate, "metrics": cmd_metrics,
               "check-data": cmd_check_data, "report": cmd_report}[args.command]
    try:
        return handler(args)
    except USER_ERRORS as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2


def cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.evaluate import evaluate_checkpoints
    from harness.registry import load_registry
    from harness.results import save_npy, write_json

    split = args.split
    if split is None:
        if args.dataset is None:
            raise ValueError("pass --split (e.g. testall for COCO, test for F30K) or --dataset")
        split = load_registry().dataset(args.dataset).split
    result = evaluate_checkpoints(args.method, args.variant, args.checkpoint, args.data_root, split, args.dataset,
                                  device=args.device, batch_size=args.batch_size,
                                  cache_dir=Path(args.cache_dir) if args.cache_dir else None, progress=True,
                                  sts_root=Path(args.sts_root) if args.sts_root else None,
                                  all_protocols=not args.recall_only,
                                  image_retrieval_root=Path(args.image_retrieval_root)
                                  if args.image_retrieval_root else None, precision=args.precision)
    console.print(recall_table(result.metrics, f"{args.method}/{args.variant} on {args.dataset or ''} {split}"))
    for name in ("eccv", "cxc"):
        if name in result.metrics:
            console.print(protocol_summary(result.metrics[name], name))
    if "image_retrieval" in result.metrics:
        console.print(image_retrieval_table(result.metrics["image_retrieval"]))
    if args.save_sims:
        save_npy(args.save_sims, result.sims)
        console.print(f"wrote {args.save_sims} ({result.sims.shape[0]} x {result.sims.shape[1]}, float32)")
    if args.json:
        write_json(args.json, {"metrics": result.metrics, "efficiency": result.efficiency})
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from harness.results import write_json

    sims = load_sims(args.sims)
    if args.protocol == "eccv":
        from harness.metrics.eccv import eccv_protocol

        out = eccv_protocol(sims, args.data_root)
        console.print(protocol_summary(out, "eccv"))
    elif args.protocol == "cxc":
        from harness.metrics.cxc import cxc_protocol

        out = cxc_protocol(sims, args.data_root, method="the matrix (no embeddings given)")
        console.print(protocol_summary(out, "cxc"))
    else:
        from harness.metrics.recall import recall_metrics

        out = recall_metrics(sims, args.protocol)
        console.print(recall_table({args.protocol: out}, f"{args.sims}"))
    if args.json:
        write_json(args.json, out)
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from harness.data.checks import check_dataset

    problems = check_dataset(args.dataset, args.data_root, args.splits.split(",") if args.splits else None,
                             layout=args.layout)
    if problems:
        for prob in problems:
            console.print(f"[red]x[/] {prob}", highlight=False, soft_wrap=True)
        console.print(f"{len(problems)} problem(s) in {args.data_root}")
        return 1
    console.print(f"[green]ok[/] {args.data_root} is a valid {args.dataset} layout")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.orchestrate import run_campaign

    return run_campaign(args)


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import write_reports

    written = write_reports(args.results, args.reports, paper=args.paper, dataset=args.dataset)
    for path in written:
        console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
