"""Command line: `run_all.py [run] --methods ... --dataset ...`, evaluate, metrics, import, check-data, report,
fetch.

Arguments are parsed and validated here, once, into typed values (a `Campaign` for `run`); nothing below this
module sees argparse. Heavy libraries (torch, transformers) are imported only by the commands that need them,
so `metrics` and `--help` start fast. Bad input ends in one escaped line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.core.outputs import guard_output
from harness.core.results import fresh_path, write_json
from harness.data.layouts import LAYOUTS
from harness.data.matrices import load_matrix, load_owner, owner_path
from harness.eval.metrics.recall import check_shape
from harness.eval.protocols import PROTOCOLS, asked_by_folders, compute_protocol, is_defined, protocol
from harness.run.display import error, say, show_protocols
from harness.spec.campaign import (
    Campaign,
    check_device,
    check_precision,
    existing_path,
    parse_data_folders,
    parse_list,
    parse_options,
    parse_overrides,
    parse_seeds,
    parse_tiles,
)
from harness.spec.checks import check_dataset
from harness.spec.registry import load_registry
from harness.spec.values import check_executor_options

SUBCOMMANDS = ("run", "evaluate", "metrics", "import", "check-data", "report", "fetch")
PRECISIONS = ("fp32", "bf16", "fp16")


def _registry_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", action="append", default=[], metavar="FILE",
                   help="a registry file layered on top of the project's (your datasets, methods, reported numbers); "
                        "repeatable")


def _perturb_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--perturb", default=None, metavar="text|image|all|NAME[@SEVERITY],...",
                   help="also a robustness pass: recall after perturbing captions or images (severity 1-5, default "
                        "3; @all: 1-5), its drop from clean and a summary (docs/robustness.md)")
    p.add_argument("--perturb-seed", type=int, default=0, help="seed of the perturbations (default 0)")


def _data_folder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-folder", action="append", default=[], metavar="PROTOCOL=DIR",
                   help="the data folder of a protocol that needs its own (sts: SentEval; image_retrieval: CUB / SOP "
                        "/ In-shop / iNaturalist); giving it asks for the protocol. Repeatable")


def _data_folders(args: argparse.Namespace, registry: Any) -> dict[str, Path]:
    """--data-folder PROTOCOL=DIR (and its shorthands --sts-root, --image-retrieval-root): protocol -> folder,
    each name a protocol of the table that declares a data folder, each folder existing."""
    items = list(args.data_folder or [])
    for name, flag, value in (("sts", "--sts-root", args.sts_root),
                              ("image_retrieval", "--image-retrieval-root", args.image_retrieval_root)):
        if value:
            items.append(f"{name}={existing_path(value, flag)}")
    return parse_data_folders(items, registry.protocols)


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
    run.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    run.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                     help="override a recipe key, repeatable (YAML value, checked against the recipe); a run with "
                          "overrides is its own job and report row, e.g. --set cusa.clip_weights=/m/ViT-B-32.bin")
    run.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="evaluations encode and score under autocast (bf16 / fp16 on CUDA); a non-fp32 run is its "
                          "own job (eval-<precision>) and report row")
    run.add_argument("--force", nargs="?", const="*", default=None, metavar="PATTERN",
                     help="replace earlier results of the planned jobs (all, or those whose name matches PATTERN, "
                          "e.g. 'coco/esa-*'); without it earlier results are kept (moved aside if they differ)")
    run.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    run.add_argument("--gpus", type=int, default=None,
                     help="processes (GPUs) per training job, data-parallel (default: the recipe's `gpus`)")
    run.add_argument("--executor-opt", action="append", default=[], metavar="KEY=VALUE",
                     help="executor setting, repeatable: local gpus=0,1 workers=N; slurm partition=, account=, "
                          "qos=, constraint=, timeout_min=, cpus_per_task=, mem_gb=, array_parallelism=")
    _registry_option(run)
    run.add_argument("--checkpoint-minutes", type=float, default=15.0,
                     help="mid-epoch training checkpoint interval in minutes (0: epoch ends only)")
    run.add_argument("--checkpoint-steps", type=int, default=None, help="also checkpoint every N steps")
    run.add_argument("--tiles", default=None, metavar="IMAGES,CAPTIONS",
                     help="scoring tile size (default: per scoring kind); smaller tiles use less memory")
    run.add_argument("--shortlist", type=int, default=None, metavar="K",
                     help="also evaluate every cross-attention model as a cascade: rerank each query's top-K of "
                          "--shortlister's stored matrix (its own job folder and report row)")
    run.add_argument("--shortlister", default=None, metavar="METHOD[/VARIANT]",
                     help="stage 1 of --shortlist: an embedding method (its evaluation of the same seed or "
                          "checkpoint is planned too)")
    _scale_options(run, "processes per evaluation job, each scoring its share of the tiles (local: ranks on this "
                        "machine; slurm: tasks of one job); training uses --gpus")
    _data_folder_options(run)
    run.add_argument("--sts-root", default=None, help="shorthand for --data-folder sts=DIR")
    run.add_argument("--image-retrieval-root", default=None,
                     help="CUB/SOP/In-shop/iNaturalist folder: adds image retrieval where the dataset declares it")

    _perturb_options(run)

    ev = sub.add_parser("evaluate", help="evaluate official (or any) checkpoints on a data split")
    ev.add_argument("--method", required=True)
    ev.add_argument("--variant", required=True)
    ev.add_argument("--checkpoint", action="append", required=True,
                    help="checkpoint file; repeat for ensembles (one per member, in registry order)")
    ev.add_argument("--data-root", required=True)
    ev.add_argument("--split", default=None, help="split name (default: the dataset's test split)")
    ev.add_argument("--dataset", default=None, help="registry dataset (its protocols apply on its test split)")
    ev.add_argument("--save-sims", default=None,
                    help="write the images x captions matrix here (.npy, float32; the caption-to-image mapping goes "
                         "beside it as <name>.image_of_caption.npy). Default: a new folder results/_evaluate/<method>-"
                         "<variant>-<dataset>-<split>-<time>/sims.npy per evaluation. An existing file is kept "
                         "unless --overwrite")
    ev.add_argument("--json", default=None, help="write metrics and efficiency as JSON")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace an existing --save-sims / --json file (never an input, the data or a job's file)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--batch-size", type=int, default=128)
    ev.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="encode and score under autocast (bf16 / fp16 on CUDA); fp32 is exact")
    ev.add_argument("--cache-dir", default=None, help="tile cache folder (resume an interrupted scoring)")
    _data_folder_options(ev)
    ev.add_argument("--sts-root", default=None, help="shorthand for --data-folder sts=DIR")
    ev.add_argument("--image-retrieval-root", default=None,
                    help="CUB/SOP/In-shop/iNaturalist folder (check-data --dataset image_retrieval): also evaluate "
                         "image retrieval R@1 with the uni-modal image head")
    ev.add_argument("--tiles", default=None, metavar="IMAGES,CAPTIONS",
                    help="scoring tile size (default: per scoring kind); smaller tiles use less memory")
    _scale_options(ev, "split the tiles over N processes (gloo on CPU, NCCL on GPUs); under a launcher "
                       "(torchrun, Slurm) its world size is used")
    ev.add_argument("--recall-only", action="store_true", help="full-split recall only (skip the dataset's protocols)")
    _perturb_options(ev)
    ev.add_argument("--shortlist", type=int, default=None, metavar="K",
                    help="cascade: rerank each query's top-K by a stage-1 source with this method's score (only those "
                         "pairs are scored; the result is cascade.npz in the output folder, not a dense matrix)")
    ev.add_argument("--shortlist-from", default=None, metavar="SIMS",
                    help="stage 1: a stored .npy matrix of the same split (e.g. an embedding method's sims.npy)")
    ev.add_argument("--shortlister", default=None, metavar="METHOD[/VARIANT]|self",
                    help="stage 1: a registered embedding method (with --shortlister-checkpoint), or 'self' for a "
                         "method with pooled embeddings of its own (embedding methods)")
    ev.add_argument("--shortlister-checkpoint", default=None, help="checkpoint of the --shortlister model")
    _registry_option(ev)

    me = sub.add_parser("metrics", help="metrics of a saved similarity matrix (numpy only; no model)")
    me.add_argument("--sims", required=True, help=".npy, .npz, .h5 or torch tensor file")
    me.add_argument("--protocol", required=True, metavar="NAME",
                    help="a protocol computed from the matrix: " + ", ".join(n for n, p in PROTOCOLS.items()
                                                                             if p.uses_matrix)
                    + ", or one a --registry file plugs in")
    me.add_argument("--image-of-caption", default=None,
                    help="caption -> image index .npy (default: <sims>.image_of_caption.npy beside the matrix if "
                         "present, else 5 captions per image in order)")
    me.add_argument("--key", default=None, help="array name inside an .npz / HDF5 / torch file of several")
    me.add_argument("--json", default=None)
    me.add_argument("--overwrite", action="store_true",
                    help="replace an existing --json file (never an input, the data or a job's file)")
    me.add_argument("--data-root", default=None, help="folder with testall_ids.txt / testall_capids.txt (eccv, cxc)")
    me.add_argument("--bootstrap", type=int, default=1000, help="resamples behind the 95%% intervals (0: none)")
    _registry_option(me)

    im = sub.add_parser("import", help="store a matrix from elsewhere as a result, with every applicable protocol")
    im.add_argument("--sims", required=True, help=".npy, .npz, .h5 or torch tensor file (images x captions)")
    im.add_argument("--method", required=True, help="NAME or NAME/VARIANT (a registered method, or a new name)")
    im.add_argument("--dataset", required=True)
    im.add_argument("--split", default=None, help="default: the dataset's test split")
    im.add_argument("--results", default="results")
    owner = im.add_mutually_exclusive_group()
    owner.add_argument("--image-of-caption", default=None, help="caption -> image index .npy")
    owner.add_argument("--captions-per-image", type=int, default=None, help="k: caption j belongs to image j // k")
    im.add_argument("--key", default=None, help="array name inside an .npz / HDF5 / torch file")
    im.add_argument("--data-root", default=None, help="data folder (ids files for ECCV / CxC; split sizes)")
    im.add_argument("--reported", default=None, help="a registry file with reported rows for this method")
    im.add_argument("--label", default=None, help="where the matrix came from (shown in reports)")
    im.add_argument("--force", action="store_true", help="replace an earlier import of the same name")
    _registry_option(im)

    cd = sub.add_parser("check-data", help="validate a data folder and name every problem")
    cd.add_argument("--dataset", required=True, help="a registry dataset, senteval or image_retrieval")
    cd.add_argument("--layout", choices=tuple(LAYOUTS), default=None,
                    help="the on-disk layout (default: the dataset's): "
                    + "; ".join(f"{n}: {row.description}" for n, row in LAYOUTS.items()))
    cd.add_argument("--data-root", required=True)
    cd.add_argument("--splits", default=None, help="comma-separated splits (default: the dataset's test split)")
    _registry_option(cd)

    rp = sub.add_parser("report", help="render reports/*.md, the static site reports/site/ and an export from results/")
    rp.add_argument("--results", action="append", default=None, metavar="DIR",
                    help="a results folder (default: results); repeat to merge several, e.g. from two clusters")
    rp.add_argument("--export", default=None, metavar="FILE",
                    help="also write every stored number as a tidy table: FILE.csv or FILE.parquet")
    rp.add_argument("--reports", default="reports")
    rp.add_argument("--paper", default=None)
    rp.add_argument("--dataset", default=None)
    _registry_option(rp)

    try:
        from harness.fetch.command import add_fetch_parser
    except ImportError:  # pragma: no cover - fetch is part of the package
        add_fetch_parser = None
    if add_fetch_parser is not None:
        add_fetch_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given (evaluate --processes relaunches it as N ranks)
    if args.command is None:
        parser.print_help()
        return 2
    warnings.formatwarning = _warning_line  # the default printer (and pytest's recorder) stay in place
    handlers = {"run": cmd_run, "evaluate": cmd_evaluate, "metrics": cmd_metrics, "import": cmd_import,
                "check-data": cmd_check_data, "report": cmd_report, "fetch": cmd_fetch}
    try:
        return handlers[args.command](args)
    except (ValueError, OSError) as exc:  # every project error is a ValueError naming the file or value
        error(_one_line(exc))
        return 2


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """Warnings as one line (`warning: ...`), without the source line Python would print."""
    return f"warning: {message}\n"


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, ValueError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        text = f"{where}{exc.strerror or text}"
    return text


def _registry(args: argparse.Namespace) -> Any:
    files = [Path(f) for f in getattr(args, "registry", []) or []]
    for f in files:
        if not f.is_file():
            raise ValueError(f"--registry {f}: no such file")
    return load_registry(*files)


# ---- evaluate ------------------------------------------------------------------------------------------------

def cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.eval.cost import add_cost
    from harness.eval.evaluation import EvalSettings, MatrixOutput, SplitSpec, evaluate_models
    from harness.run import evaluate_processes
    from harness.spec.registry import load_members
    _processes(args.processes)
    if args.processes > 1 and not evaluate_processes.under_launcher():
        argv = list(args.argv)
        if not args.save_sims:  # every rank must name the same folder
            base = Path("results") / "_evaluate" / f"{args.method}-{args.variant}-{args.dataset or 'data'}-" \
                f"{args.split or 'test'}"
            argv += ["--save-sims", str(fresh_path(base) / "sims.npy")]
        return evaluate_processes.relaunch(argv, args.processes, args.device)
    registry = _registry(args)
    method = registry.method(args.method)
    method.variant(args.variant)
    ds = registry.dataset(args.dataset) if args.dataset else None
    split = args.split or (ds.split if ds else None)
    if split is None:
        raise ValueError("pass --split (e.g. testall for COCO, test for F30K) or --dataset")
    data_root = existing_path(args.data_root, "--data-root")
    for ck in args.checkpoint:
        existing_path(ck, "--checkpoint", kind="file")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: expected a positive integer")
    robustness = _robustness_request(args)
    reads = [*args.checkpoint, *(getattr(args, "registry", None) or [])]
    data_folders = _data_folders(args, registry)
    folders = [data_root, *data_folders.values()]
    json_out = guard_output(args.json, "--json", reads=reads, data_folders=folders, overwrite=args.overwrite)
    if args.save_sims:
        sims_out = guard_output(args.save_sims, "--save-sims", reads=reads, data_folders=folders,
                                overwrite=args.overwrite)
        guard_output(owner_path(sims_out), "--save-sims (its caption-to-image mapping)", reads=reads,
                     data_folders=folders, overwrite=args.overwrite)
        if json_out is not None and json_out.resolve() in (sims_out.resolve(), owner_path(sims_out).resolve()):
            raise ValueError(f"--json {args.json}: is the --save-sims output; give the two outputs their own names")
    else:  # each evaluation its own folder: a later checkpoint never replaces an earlier one's matrix
        base = Path("results") / "_evaluate" / f"{args.method}-{args.variant}-{args.dataset or 'data'}-{split}"
        sims_out = fresh_path(base) / "sims.npy"
    settings = EvalSettings(batch_size=args.batch_size, precision=args.precision, store_matrix=args.store_matrix,
                            matrix_limit=_matrix_limit(args.matrix_limit),
                            **dict(zip(("image_tile", "caption_tile"), parse_tiles(args.tiles) or (None, None))),
                            data_folders=data_folders)
    device = check_device(args.device) or "cpu"
    check_precision(args.precision, device)
    device, main_rank = evaluate_processes.join(device)
    members = [m.to(device) for m in load_members(method, args.variant, args.checkpoint, args.dataset)]
    protocols = () if args.recall_only or ds is None else ds.protocols
    if not args.recall_only:  # asked for by name: run them whatever the dataset declares
        protocols = (*protocols, *asked_by_folders(settings.data_folders, registry.protocols))
    from harness.run.plan import data_layout  # torch-backed modules: imported by the commands that run models

    layout = data_layout(registry, method.name, ds.name) if ds else "precomp"
    spec = SplitSpec(data_root, split, ds.name if ds else None, test_split=ds is not None and split == ds.split,
                     protocols=protocols, layout=layout, table=registry.protocols)
    if args.shortlist is not None:
        return _evaluate_cascade(args, registry, members, spec, settings, sims_out, json_out, device)
    cache_dir = args.cache_dir or (evaluate_processes.shared_cache(sims_out) if evaluate_processes.several() else None)
    output = MatrixOutput.beside(sims_out, cache_dir)
    with _progress() as hooks:
        result = evaluate_models(members, spec, settings, output, hooks, robustness)
    if not main_rank:  # its tiles are merged and evaluated by rank 0
        return 0
    shape = result.shape
    if result.sims is None:
        say(f"streamed {shape[0]} x {shape[1]} without storing the matrix; wrote its rank summary {output.ranks} "
            f"and {output.owner}")
    else:
        say(f"wrote {output.matrix} ({shape[0]} x {shape[1]}, {result.sims.dtype}) and {output.owner}")
    show_protocols(result.metrics, f"{args.method}/{args.variant} on {args.dataset or ''} {split}",
                   registry.protocols)
    if result.robustness is not None:
        from harness.run.robust_display import show_robustness

        show_robustness(result.robustness, f"{args.method}/{args.variant}")
    if json_out is not None:
        extra = {"robustness": result.robustness} if result.robustness is not None else {}
        write_json(json_out, {"metrics": result.metrics, "efficiency": add_cost(result.efficiency, shape),
                              "shape": list(shape),
                              "matrix": str(output.matrix) if result.sims is not None else None,
                              "ranks": str(output.ranks) if result.sims is None else None, **extra})
        say(f"wrote {json_out}")
    return _exit_status(result.metrics)


def _robustness_request(args: argparse.Namespace) -> Any:
    """The parsed --perturb / --perturb-seed (None without --perturb); bad values fail before any model loads."""
    if not getattr(args, "perturb", None):
        return None
    from harness.eval.perturb.spec import parse_perturb
    from harness.eval.robustness import RobustnessRequest

    if args.perturb_seed < 0:
        raise ValueError(f"--perturb-seed {args.perturb_seed}: expected 0 or a positive integer")
    return RobustnessRequest(parse_perturb(args.perturb), args.perturb_seed)


def _stage1(args: argparse.Namespace, registry: Any, device: str) -> Any:
    """The --shortlist-from / --shortlister source of a cascade (exactly one of them)."""
    from harness.eval.cascade import Stage1
    from harness.spec.registry import load_members

    if (args.shortlist_from is None) == (args.shortlister is None):
        raise ValueError("--shortlist K needs exactly one stage-1 source: --shortlist-from SIMS.npy or "
                         "--shortlister METHOD[/VARIANT] (or self)")
    if args.shortlist_from is not None:
        path = existing_path(args.shortlist_from, "--shortlist-from", kind="file")
        return Stage1("matrix", f"matrix {path.name}", matrix=path)
    if args.shortlister == "self":
        return Stage1("self", "self")
    name, _, variant = args.shortlister.partition("/")
    method = registry.method(name)
    variant = variant or next(iter(method.variants))
    method.variant(variant)
    if args.shortlister_checkpoint is None:
        raise ValueError(f"--shortlister {args.shortlister}: pass --shortlister-checkpoint (its model file), or give "
                         "its stored matrix with --shortlist-from")
    ck = existing_path(args.shortlister_checkpoint, "--shortlister-checkpoint", kind="file")
    model = load_members(method, variant, [ck], args.dataset)[0].to(device)
    if model.scoring != "embedding":
        raise ValueError(f"--shortlister {args.shortlister}: a cross-attention method; stage 1 needs an embedding "
                         "method (e.g. esa)")
    return Stage1("model", f"{name}/{variant}", model=model)


def cascade_path(sims_out: Path) -> Path:
    """Where `--save-sims X.npy` puts a cascade's result: `X.cascade.npz` beside it."""
    return sims_out.with_name(f"{sims_out.stem}.cascade.npz")


def _evaluate_cascade(args: argparse.Namespace, registry: Any, members: Any, spec: Any, settings: Any,
                      sims_out: Path, json_out: Path | None, device: str) -> int:
    from harness.core.results import save_npy
    from harness.eval.cascade import evaluate_cascade
    from harness.eval.cost import add_cost

    stage1 = _stage1(args, registry, device)
    if args.save_sims:  # the cascade beside X.npy: X.cascade.npz (+ X's mapping), no folder X/
        target = guard_output(str(cascade_path(sims_out)), "--save-sims (its cascade result)", overwrite=args.overwrite,
                              reads=[*args.checkpoint, *(getattr(args, "registry", None) or [])])
        folder = None
    else:
        folder = sims_out.parent
        target = folder / "cascade.npz"
    with _progress() as hooks:
        result = evaluate_cascade(members, spec, settings, stage1, args.shortlist, folder, hooks)
    if folder is None:
        result.result.save(target)
        save_npy(owner_path(sims_out), result.image_of_caption)
    rec = result.result.record()
    say(f"wrote {target}: top-{rec['k']} of {rec['source']}, {rec['pairs_scored']:,} of "
        f"{rec['pairs_total']:,} pairs scored ({100 * rec['pairs_fraction']:.2f}%)")
    show_protocols(result.metrics, f"{args.method}/{args.variant}, rerank top-{args.shortlist} of {stage1.label}")
    if json_out is not None:
        eff = add_cost(result.efficiency, result.result.shape, result.result.pairs_scored)
        write_json(json_out, {"metrics": result.metrics, "efficiency": eff, "cascade": rec,
                              "shape": list(result.result.shape), "result": str(target)})
        say(f"wrote {json_out}")
    return _exit_status(result.metrics)


def _exit_status(metrics: dict[str, Any]) -> int:
    if any(is_defined(m) for m in metrics.values()):
        return 0
    error("no protocol could be computed: " + "; ".join(f"{n}: {m.get('reason')}" for n, m in metrics.items()))
    return 1


class _progress:
    """Rich progress for the CLI's evaluation phases (encoding, scoring, metrics)."""

    def __enter__(self) -> Any:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from harness.eval.evaluation import Hooks
        from harness.run.display import console

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), transient=True, console=console, disable=not console.is_terminal)
        self.tasks: dict[str, Any] = {}
        self.bar.start()

        def progress(phase: str, done: float, total: float, text: str) -> None:
            if phase not in self.tasks:
                self.tasks[phase] = self.bar.add_task(phase, total=total)
            self.bar.update(self.tasks[phase], completed=done, total=total, description=phase)

        return Hooks(progress=progress, log=lambda msg: say(msg, "dim"))

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()


# ---- metrics / import ----------------------------------------------------------------------------------------

def cmd_metrics(args: argparse.Namespace) -> int:
    table = _registry(args).protocols
    if args.protocol in table and not table[args.protocol].uses_matrix:
        raise ValueError(f"--protocol {args.protocol}: computed from a model's embeddings, not from a matrix; run "
                         "`evaluate` with the model instead")
    proto = protocol(args.protocol, {n: p for n, p in table.items() if p.uses_matrix})
    mapping = Path(args.image_of_caption) if args.image_of_caption else owner_path(Path(args.sims))
    json_out = guard_output(args.json, "--json", reads=[args.sims, mapping, *(getattr(args, "registry", None) or [])],
                            data_folders=[args.data_root], overwrite=args.overwrite)
    sims = load_matrix(args.sims, args.key)
    owner = None
    if args.image_of_caption or mapping.is_file():
        check_shape(*sims.shape, None, args.sims)  # a transposed matrix is named before its mapping's length
        owner = load_owner(mapping, sims.shape[1], sims.shape[0])
    ids = Path(args.data_root) if args.data_root else None
    if ids is not None and not ids.is_dir():
        raise ValueError(f"--data-root {ids}: no such folder")
    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap {args.bootstrap}: expected 0 or a positive number of resamples")
    out = compute_protocol(proto.name, sims, owner, bootstrap=args.bootstrap, ids_dir=ids, matrix_name=args.sims,
                           table=table)
    show_protocols({proto.name: out}, str(args.sims), table)
    if json_out is not None:
        write_json(json_out, out)
        say(f"wrote {json_out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from harness.cli.importing import import_matrix

    registry = _registry(args)
    result = import_matrix(registry, sims=Path(args.sims), method=args.method, dataset=args.dataset,
                           split=args.split, results=Path(args.results),
                           image_of_caption=Path(args.image_of_caption) if args.image_of_caption else None,
                           captions_per_image=args.captions_per_image, key=args.key,
                           data_root=Path(args.data_root) if args.data_root else None,
                           reported=Path(args.reported) if args.reported else None, label=args.label,
                           force=args.force)
    say(f"stored {result.folder}")
    show_protocols(result.metrics, f"{args.method} (imported) on {args.dataset}", registry.protocols)
    return _exit_status(result.metrics)


# ---- check-data / report / run / fetch ------------------------------------------------------------------------

def cmd_check_data(args: argparse.Namespace) -> int:
    registry = _registry(args) if args.dataset not in ("senteval", "image_retrieval") else None
    problems = check_dataset(args.dataset, args.data_root, parse_list(args.splits) or None, layout=args.layout,
                             registry=registry, decode_images=True)
    if problems:
        for prob in problems:
            say(f"x {prob}", "red")
        say(f"{len(problems)} problem(s) in {args.data_root}")
        return 1
    say(f"ok {args.data_root} is a valid {args.dataset} layout", "green")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import write_reports  # only this command renders reports: the others start faster

    registry = _registry(args)
    folders = args.results or ["results"]
    for folder in folders:
        if not Path(folder).is_dir():
            raise ValueError(f"--results {folder}: no such results folder (run `run_all.py run` or `import` first)")
    written = write_reports(folders, args.reports, paper=args.paper, dataset=args.dataset, registry=registry,
                            export=args.export)
    for path in written:
        say(f"wrote {path}")
    return 0


def campaign_from_args(args: argparse.Namespace, registry: Any = None) -> Any:
    """The typed campaign spec of `run`, every value validated before any job starts."""

    registry = registry or _registry(args)
    methods = tuple(parse_list(args.methods))
    if not methods:
        raise ValueError("--methods is empty; valid: " + ", ".join(registry.methods))
    for m in methods:
        registry.method(m)
    ds = registry.dataset(args.dataset)
    variants = tuple(parse_list(args.variants))
    for v in variants:
        if not any(v in registry.method(m).variants for m in methods):
            registry.method(methods[0]).variant(v)  # the error names the valid variants
    if args.gpus is not None and args.gpus < 1:
        raise ValueError(f"--gpus {args.gpus}: expected a positive integer")
    if args.checkpoint_steps is not None and args.checkpoint_steps < 1:
        raise ValueError(f"--checkpoint-steps {args.checkpoint_steps}: expected a positive integer")
    if not math.isfinite(args.checkpoint_minutes) or args.checkpoint_minutes < 0:
        raise ValueError(f"--checkpoint-minutes {args.checkpoint_minutes}: expected a finite number of minutes, 0 "
                         "or more (0: checkpoint at epoch ends only)")
    options = parse_options(args.executor_opt)
    check_executor_options(args.executor, options)
    device = check_device(args.device)
    check_precision(args.precision, device)
    if (args.shortlist is None) != (args.shortlister is None):
        raise ValueError("--shortlist K and --shortlister METHOD[/VARIANT] go together (e.g. --shortlist 64 "
                         "--shortlister esa)")
    return Campaign(
        methods=methods, dataset=ds.name, variants=variants, stage=args.stage, seeds=parse_seeds(args.seeds),
        data_root=Path(args.data_root), checkpoint_dir=Path(args.checkpoint_dir), results=Path(args.results),
        reports=Path(args.reports), registry_files=tuple(Path(f).resolve() for f in args.registry),
        executor=args.executor, executor_options=options, device=device,
        precision=args.precision,
        overrides=parse_overrides(args.set, registry, methods, ds.name, variants),
        force=(args.force,) if args.force else (), dry_run=args.dry_run, gpus=args.gpus,
        checkpoint_minutes=args.checkpoint_minutes or None, checkpoint_steps=args.checkpoint_steps,
        tiles=parse_tiles(args.tiles), eval_processes=_processes(args.processes),
        store_matrix=args.store_matrix, matrix_limit=_matrix_limit(args.matrix_limit),
        data_folders=_data_folders(args, registry), shortlist=args.shortlist, shortlister=args.shortlister,
        **_campaign_perturb(args))


def _campaign_perturb(args: argparse.Namespace) -> dict[str, Any]:
    request = _robustness_request(args)
    return {} if request is None else {"perturb": request.spec, "perturb_seed": request.seed}


def _processes(n: int) -> int:
    if not 1 <= n <= 1024:
        raise ValueError(f"--processes {n}: expected a number of processes between 1 and 1024")
    return n


def _matrix_limit(gb: float) -> int:
    if not gb > 0:
        raise ValueError(f"--matrix-limit {gb}: expected a positive size in GB")
    return int(gb * 2**30)


def _scale_options(p: argparse.ArgumentParser, processes_help: str) -> None:
    """--store-matrix, --matrix-limit and --processes (evaluate and run)."""
    p.add_argument("--store-matrix", choices=("auto", "always", "never"), default="auto",
                   help="keep the dense matrix (auto: below --matrix-limit), or stream tiles into a rank summary "
                        "(ranks.npz) that recall / COCO 1K / COCO 5K / F30K 1K / ECCV Caption / CxC and paired tests "
                        "are computed from")
    p.add_argument("--matrix-limit", type=float, default=4.0, metavar="GB",
                   help="largest matrix --store-matrix auto keeps, in GB (default 4)")
    p.add_argument("--processes", type=int, default=1, help=processes_help)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.run.orchestrate import run_campaign

    registry = _registry(args)  # read once: the campaign, the plan, the jobs run inline and the report share it
    return run_campaign(campaign_from_args(args, registry), registry)


def cmd_fetch(args: argparse.Namespace) -> int:
    from harness.fetch.command import run_fetch

    return run_fetch(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
