"""The one evaluation path, shared by `run_all.py evaluate`, planned evaluation jobs and `import`:

1. read the split (images, captions, caption-to-image mapping) through the first model's adapter;
2. encode each image and caption once per model and score blockwise into a resumable tile cache;
3. average the models' matrices (ensembles) and **write the matrix and the mapping** (`MatrixOutput`);
4. run every wanted protocol of the table (`harness.eval.protocols`): a result, or "not defined: reason";
5. return metrics and one efficiency record; callers write them atomically.

Nothing after step 3 can lose the scored matrix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.api.adapter import Adapter, parameter_count
from harness.core.results import move_aside, save_npy
from harness.data.cusa_json import find_split_folder, load_cusa_split
from harness.data.image_retrieval import (
    ImageFiles,
    ImageRetrievalDataError,
    check_image_retrieval,
    load_image_retrieval,
    present_sets,
)
from harness.data.layouts import LAYOUTS
from harness.data.matrices import OWNER, owner_path
from harness.data.precomp import candidate_dirs
from harness.eval import sharding
from harness.eval.metrics.coco_captions import coco_ids_of_columns
from harness.eval.metrics.ids import CocoTestIds
from harness.eval.metrics.image_retrieval import image_retrieval_protocol
from harness.eval.precision import check_precision
from harness.eval.protocols import BOOTSTRAP, PROTOCOLS, EvalInputs, Protocol, run_protocols, wanted
from harness.eval.robustness import RobustnessRequest, ensemble_robustness, robustness_pass
from harness.eval.scoring import (
    DEFAULT_TILES,
    CacheError,
    encode_images,
    encode_texts,
    eval_mode,
    score_blocks,
    tile_grid,
)
from harness.eval.streaming import MATRIX_LIMIT, SummaryError, keeps_matrix, stream_ranks
from harness.eval.summary_metrics import coco_collector


class EvaluationInterrupted(RuntimeError):
    """Scoring stopped on request after keeping its finished tiles."""


@dataclass(frozen=True)
class SplitSpec:
    """Which split a matrix is of, and the protocols its dataset declares."""

    data_root: Path
    split: str
    dataset: str | None = None
    test_split: bool = False  # the dataset's declared test split (paper protocols apply only there)
    protocols: tuple[str, ...] = ()
    layout: str = "precomp"  # how the split is stored: a row of harness.data.layouts.LAYOUTS
    table: Mapping[str, Protocol] | None = None  # the registry's protocol table (None: the built-ins)


@dataclass(frozen=True)
class EvalSettings:
    """How to compute: batch and tile sizes, precision, extra protocol data. Not part of what is computed
    except `precision` (which the planner puts into a job's identity)."""

    batch_size: int = 128
    precision: str = "fp32"
    image_tile: int | None = None
    caption_tile: int | None = None
    data_folders: Mapping[str, Path] = field(default_factory=dict)  # protocol name -> its data folder
    bootstrap: int = BOOTSTRAP
    store_matrix: str = "auto"  # auto | always | never: keep the dense matrix, or stream a rank summary
    matrix_limit: int = MATRIX_LIMIT  # bytes up to which `auto` keeps the matrix


@dataclass(frozen=True)
class MatrixOutput:
    """Where the matrix, its caption-to-image mapping and the tile caches go (any may be None)."""

    matrix: Path | None = None
    owner: Path | None = None
    cache_dir: Path | None = None
    ranks: Path | None = None  # the rank summary of an evaluation that keeps no matrix

    @classmethod
    def beside(cls, matrix: str | Path | None, cache_dir: str | Path | None = None) -> MatrixOutput:
        """`X.npy` with its mapping in `X.image_of_caption.npy` and a streamed evaluation's rank summary in
        `X.ranks.npz` (the CLI's --save-sims)."""
        m = Path(matrix) if matrix else None
        return cls(m, owner_path(m) if m else None, Path(cache_dir) if cache_dir else None,
                   m.with_name(m.stem + ".ranks.npz") if m else None)

    @classmethod
    def job(cls, folder: Path) -> MatrixOutput:
        return cls(folder / "sims.npy", folder / OWNER, folder / "work", folder / "ranks.npz")


@dataclass
class Hooks:
    """Progress and control: `progress(phase, done, total, text)`, `log(msg)`, `on_tile()` after each
    scored tile, `should_stop()` polled between tiles."""

    progress: Callable[[str, float, float, str], None] = lambda *a: None
    log: Callable[[str], None] = lambda msg: None
    on_tile: Callable[[], None] = lambda: None
    should_stop: Callable[[], bool] | None = None


@dataclass
class Evaluation:
    sims: np.ndarray | None  # None when streamed: `ranks` holds the rank summary instead
    image_of_caption: np.ndarray
    metrics: dict[str, Any]
    efficiency: dict[str, Any] = field(default_factory=dict)
    robustness: dict[str, Any] | None = None  # the robustness pass's record, when one was asked for
    ranks: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.sims.shape) if self.sims is not None else self.ranks.shape


# ---- data ------------------------------------------------------------------------------------------------

def split_data(adapter: Adapter, spec: SplitSpec) -> tuple[Any, list[str], np.ndarray]:
    """(images, captions, caption -> image index) of a split in the adapter's canonical order."""
    images, captions = adapter.eval_data(spec.data_root, spec.split, spec.dataset)
    owner = adapter.image_of_caption(spec.data_root, spec.split, spec.dataset)
    if owner is None:
        n_img = len(images)
        k = len(captions) // n_img if n_img else 0
        owner = np.arange(len(captions)) // max(k, 1)
    return images, list(captions), np.asarray(owner, dtype=np.int64)


def ids_dir(data_root: str | Path, split: str, dataset: str | None) -> Path | None:
    """The folder holding `<split>_ids.txt` / `<split>_capids.txt` (COCO ids of rows / columns), if any."""
    for d in [*candidate_dirs(data_root, dataset), Path(data_root) / (dataset or "coco") / "cxc_annots"]:
        if (d / f"{split}_ids.txt").is_file() or (d / f"{split}_capids.txt").is_file():
            return d
    return None


# ---- scoring ---------------------------------------------------------------------------------------------

def cached_tiles(cache: Path, tiles: tuple[int, int]) -> int:
    """Finished tiles in a tile cache of the same tiling (0 when absent or of another tiling)."""
    if not cache.is_file():
        return 0
    import h5py

    try:
        with h5py.File(cache, "r") as f:
            if tuple(int(t) for t in f.attrs["tiles"]) != tuple(tiles):
                return 0
            return int(np.asarray(f["done"][...]).sum())
    except (OSError, KeyError):
        return 0


def score_model(adapter: Adapter, images: Any, captions: Sequence[str], settings: EvalSettings,
                cache: Path | None = None, hooks: Hooks | None = None,
                keep: dict[str, Any] | None = None,
                select: Callable[[int], bool] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Encode once, score tile by tile into `cache` (resumable), with timings. `keep`, when given, receives
    the encodings ("images", "texts") for a robustness pass to reuse; `select` keeps the grid's tiles this
    process scores (harness.eval.sharding); the others are left unset."""
    hooks = hooks or Hooks()
    precision = settings.precision
    check_precision(precision, adapter.device)
    n_img, n_cap = len(images), len(captions)
    counts = {"images": 0, "captions": 0}

    def counter(kind: str, total: int) -> Callable[[int], None]:
        def on_batch(k: int) -> None:
            counts[kind] += k
            hooks.progress("encoding", counts[kind], total, f"encoding {kind} {counts[kind]}/{total}")
        return on_batch

    t0 = time.perf_counter()
    img = encode_images(adapter, images, batch_size=settings.batch_size, on_batch=counter("images", n_img),
                        precision=precision)
    t1 = time.perf_counter()
    txt = encode_texts(adapter, captions, batch_size=settings.batch_size, on_batch=counter("captions", n_cap),
                       precision=precision)
    t2 = time.perf_counter()
    if keep is not None:
        keep.update(images=img, texts=txt)
    default = DEFAULT_TILES[adapter.scoring]
    tiles = (settings.image_tile or default[0], settings.caption_tile or default[1])
    grid = tile_grid(n_img, n_cap, *tiles)
    total = len(grid) if select is None else sum(1 for i in range(len(grid)) if select(i))
    reused = cached_tiles(cache, tiles) if cache is not None else 0
    if reused:
        hooks.log(f"resuming scoring: {reused}/{total} tiles already in {cache}")
    scored = [0]

    def on_tile(a: int, c: int) -> None:
        scored[0] += 1
        done = reused + scored[0]
        hooks.progress("scoring", done, total, f"tiles {done}/{total}")
        hooks.on_tile()
        if hooks.should_stop and hooks.should_stop() and done < total:
            raise EvaluationInterrupted(f"scoring stopped after {done}/{total} tiles (kept in {cache})")

    def run() -> np.ndarray:
        return score_blocks(adapter, img, txt, image_tile=tiles[0], caption_tile=tiles[1], cache=cache,
                            on_tile=on_tile, precision=precision, select=select)

    t3 = time.perf_counter()
    try:
        sims = run()
    except CacheError as exc:  # tile sizes changed, or encodings differ on a nondeterministic GPU
        assert cache is not None
        aside = move_aside(cache, "stale")
        hooks.log(f"tile cache not reusable ({exc}); moved aside to {aside.name}, scoring from scratch")
        reused, scored[0] = 0, 0
        t3 = time.perf_counter()
        sims = run()
    measured = time.perf_counter() - t3
    eff: dict[str, Any] = {
        "variant": adapter.variant, "parameters": parameter_count(adapter.model),
        "encode_ms_per_image": 1000 * (t1 - t0) / max(1, n_img),
        "encode_ms_per_caption": 1000 * (t2 - t1) / max(1, n_cap),
        "scoring_seconds": measured, "tiles": total, "tile_size": list(tiles), "precision": precision}
    if reused:
        eff["scoring_seconds"] = measured * total / max(1, scored[0])
        eff["scoring_seconds_extrapolated"] = True
        eff["tiles_reused"] = reused
    return sims, eff


def score_shard(adapter: Adapter, images: Any, captions: Sequence[str], settings: EvalSettings,
                cache: Path | None, hooks: Hooks) -> tuple[np.ndarray | None, dict[str, Any]]:
    """This rank's tiles scored into its own cache; on rank 0, after every rank is done, the merged matrix
    (None on the other ranks)."""
    if cache is None:
        raise sharding.ShardError("an evaluation over several processes needs a tile cache folder shared by the "
                                  "ranks (--cache-dir, or a job folder)")
    me, n = sharding.rank(), sharding.world()
    own = sharding.rank_cache(cache, me, n)
    _, eff = score_model(adapter, images, captions, settings, own, hooks, select=sharding.selector(me, n))
    sharding.barrier()
    if me != 0:
        return None, eff
    import h5py

    with h5py.File(own, "r") as f:
        fingerprint = str(f.attrs["fingerprint"])
    tiles = tuple(eff["tile_size"])
    grid = tile_grid(len(images), len(captions), *tiles)
    sims = sharding.merge_tiles(cache, n, grid, (len(images), len(captions)), tiles, fingerprint)
    eff["processes"] = n
    return sims, eff


def mean_matrix(matrices: Sequence[np.ndarray]) -> np.ndarray:
    """The float32 mean of several models' matrices, accumulated in float64 (ensembles)."""
    total = np.zeros(matrices[0].shape, dtype=np.float64)
    for m in matrices:
        if m.shape != total.shape:
            raise ValueError(f"ensemble members scored matrices of different shapes: {matrices[0].shape} and "
                             f"{m.shape}")
        total += m
    return (total / len(matrices)).astype(np.float32)


def combine_efficiency(members: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One efficiency record for several models' records (sums; peak memory is the max)."""
    eff: dict[str, Any] = {k: sum(float(e.get(k) or 0.0) for e in members)
                           for k in ("parameters", "scoring_seconds", "encode_ms_per_image", "encode_ms_per_caption",
                                     "gpu_hours", "eval_wall_seconds")}
    eff["parameters"] = int(eff["parameters"])
    peaks = [e["peak_memory_mb"] for e in members if e.get("peak_memory_mb") is not None]
    eff["peak_memory_mb"] = max(peaks) if peaks else None
    eff["precision"] = next((e["precision"] for e in members if e.get("precision")), "fp32")
    eff["members"] = list(members)
    return eff


def peak_memory(device: str) -> tuple[float | None, str]:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "process_max_rss"
    except ImportError:  # pragma: no cover - Windows
        return None, "unknown"


# ---- uni-modal spaces (CxC t2t / i2i, STS, image retrieval) -------------------------------------------------

def text_vectors(adapter: Adapter, captions: Sequence[str], batch_size: int = 128) -> np.ndarray | None:
    """Caption vectors in the model's uni-modal text space (its joint space for plain embedding methods);
    None for cross-attention scorers."""
    if adapter.scoring != "embedding":
        return None
    with eval_mode(adapter):
        text = adapter.text_embeddings(list(captions))
    if text is None:
        text = encode_texts(adapter, captions, batch_size)
    return text.float().cpu().numpy()


def image_vectors(adapter: Adapter, images: Any, batch_size: int = 128) -> np.ndarray | None:
    """Image vectors in the model's uni-modal image space (its joint space for plain embedding methods)."""
    if adapter.scoring != "embedding":
        return None
    chunks = []
    with eval_mode(adapter):
        for a in range(0, len(images), batch_size):
            chunk = images[a:a + batch_size]
            x = torch.from_numpy(np.array(chunk, dtype=np.float32)) if isinstance(chunk, np.ndarray) \
                else (chunk if isinstance(chunk, torch.Tensor) else torch.stack(list(chunk)))
            emb = adapter.image_embeddings(x.to(adapter.device))
            if emb is None:
                break
            chunks.append(emb.float().cpu())
    vectors = torch.cat(chunks) if chunks else encode_images(adapter, images, batch_size)
    return vectors.float().cpu().numpy()


def image_retrieval_runner(adapter: Adapter, batch_size: int) -> Callable[[Path], dict[str, Any]] | None:
    """CUSA's image retrieval protocol with the model's uni-modal image head on image files, or None when the
    model reads region features (no image encoder to run on files)."""
    if adapter.image_input != "pixels" or adapter.preprocess is None:
        return None
    transform = adapter.preprocess

    def run(root: Path) -> dict[str, Any]:
        names, absent = present_sets(root)
        if not names:
            raise ImageRetrievalDataError(f"{root}: no image retrieval set found (" + "; ".join(absent.values()) + ")")
        problems = check_image_retrieval(root, tuple(names))
        if problems:
            raise ImageRetrievalDataError(f"{root}: " + "; ".join(problems))
        features: dict[str, tuple] = {}
        for name in names:
            ds = load_image_retrieval(root, name)
            query = _file_vectors(adapter, ImageFiles(ds.paths, transform), batch_size)
            if query is None:
                return {"defined": False, "reason": f"{adapter.method} has no uni-modal image head"}
            if ds.has_gallery:
                gallery = _file_vectors(adapter, ImageFiles(ds.gallery_paths or [], transform), batch_size)
                features[name] = (query, ds.labels, gallery, ds.gallery_labels)
            else:
                features[name] = (query, ds.labels)
        out = image_retrieval_protocol(features)
        if absent:
            out["missing"] = absent
        return out

    return run


def _file_vectors(adapter: Adapter, images: Any, batch_size: int) -> np.ndarray | None:
    chunks = []
    with eval_mode(adapter):
        for a in range(0, len(images), batch_size):
            emb = adapter.image_embeddings(images[a:a + batch_size].to(adapter.device))
            if emb is None:
                return None
            chunks.append(emb.float().cpu())
    return torch.cat(chunks).numpy()


# ---- the path ------------------------------------------------------------------------------------------------

def protocol_inputs(sims: np.ndarray, owner: np.ndarray, spec: SplitSpec, settings: EvalSettings,
                    members: Sequence[Adapter] | None = None, images: Any = None, captions: Sequence[str] = (),
                    method: str = "the matrix", scoring: str = "embedding", n_members: int = 1) -> EvalInputs:
    """What the protocol table sees of one evaluation (models are used lazily, only by protocols needing them)."""
    single = members[0] if members and len(members) == 1 else None
    batch = settings.batch_size
    text = image = sentences = retrieval = None
    if single is not None and single.scoring == "embedding":
        if images is not None:
            def text() -> np.ndarray | None:
                return text_vectors(single, captions, batch)

            def image() -> np.ndarray | None:
                return image_vectors(single, images, batch)

        def sentences(batch_of: Sequence[str]) -> np.ndarray:
            vectors = text_vectors(single, batch_of, batch)
            assert vectors is not None
            return vectors

        retrieval = image_retrieval_runner(single, batch)
    if members:
        method, scoring, n_members = members[0].method, members[0].scoring, len(members)
    coco_ids = coco_columns = None
    if LAYOUTS[spec.layout].caption_ids and spec.test_split and spec.dataset == "coco" and \
            any(table[p].coco_ids for p in spec.protocols if p in (table := spec.table or PROTOCOLS)):
        found = json_coco_ids(spec, owner)
        if not isinstance(found, str):
            coco_ids, coco_columns = found
    return EvalInputs(
        sims=sims, image_of_caption=owner, dataset=spec.dataset, split=spec.split, test_split=spec.test_split,
        data_root=spec.data_root, ids_dir=ids_dir(spec.data_root, spec.split, spec.dataset), coco_ids=coco_ids,
        coco_columns=coco_columns, method=method, scoring=scoring, members=n_members, text_embeddings=text,
        image_embeddings=image, sentence_embedder=sentences, image_retrieval=retrieval,
        data_folders=settings.data_folders,
        bootstrap=settings.bootstrap)


def json_coco_ids(spec: SplitSpec, owner: np.ndarray) -> tuple[CocoTestIds, np.ndarray] | str:
    """COCO ids of a json COCO test split's rows and of the columns that are Karpathy COCO 5K captions (ECCV
    Caption and CxC then run on CUSA's 25,010-caption test set), or why they cannot be had."""
    folder = find_split_folder(spec.data_root, spec.split, spec.dataset)
    if folder is None:
        return f"no new_{spec.split}.json under {spec.data_root}"
    split = load_cusa_split(folder, spec.split, check_images=False)
    if len(split.captions) != len(owner) or not np.array_equal(split.image_of_caption, owner):
        return f"{split.path}: the json's caption order differs from the evaluated matrix's"
    return coco_ids_of_columns([str(i) for i in split.image_ids], owner, split.captions)


def evaluate_models(members: Sequence[Adapter], spec: SplitSpec, settings: EvalSettings,
                    output: MatrixOutput | None = None, hooks: Hooks | None = None,
                    robustness: RobustnessRequest | None = None) -> Evaluation:
    """Score one model (or average an ensemble's models) on a split, save the matrix, run the protocols,
    and with `robustness` a robustness pass reusing the clean encodings (harness.eval.robustness)."""
    hooks = hooks or Hooks()
    output = output or MatrixOutput()
    t_start = time.perf_counter()
    images, captions, owner = split_data(members[0], spec)
    if not keeps_matrix(settings.store_matrix, len(images), len(captions), settings.matrix_limit):
        return _evaluate_streamed(members, spec, settings, output, hooks, (images, captions, owner), t_start)
    matrices, effs = [], []
    keep: dict[str, Any] | None = {} if robustness is not None and len(members) == 1 else None
    for k, adapter in enumerate(members):
        cache = output.cache_dir / f"tiles_{k}.h5" if output.cache_dir else None
        if sharding.world() > 1:
            sims_k, eff_k = score_shard(adapter, images, captions, settings, cache, hooks)
            if sims_k is None:  # not rank 0: its tiles are in its own cache; rank 0 merges and evaluates
                return Evaluation(None, owner, {}, eff_k)
        else:
            sims_k, eff_k = score_model(adapter, images, captions, settings, cache, hooks, keep)
        matrices.append(sims_k)
        effs.append(eff_k)
    sims = matrices[0] if len(matrices) == 1 else mean_matrix(matrices)
    del matrices
    save_matrix(sims, owner, output)
    device = str(members[0].device)
    eff = effs[0] if len(effs) == 1 else combine_efficiency(effs)
    metrics = run_protocols(protocol_inputs(sims, owner, spec, settings, members, images, captions),
                            wanted(spec.protocols, spec.table),
                            on_protocol=lambda name: hooks.progress("metrics", 0, 1, name), table=spec.table)
    robust = None
    if robustness is not None:
        t_robust = time.perf_counter()
        if keep is None:
            robust = ensemble_robustness(robustness, len(members))
        else:
            robust = robustness_pass(
                members[0], images, captions, owner, clean_images=keep["images"], clean_texts=keep["texts"],
                clean_sims=sims, request=robustness, batch_size=settings.batch_size, precision=settings.precision,
                tiles=(settings.image_tile or DEFAULT_TILES[members[0].scoring][0],
                       settings.caption_tile or DEFAULT_TILES[members[0].scoring][1]), progress=hooks.progress)
        eff["robustness_seconds"] = time.perf_counter() - t_robust
    wall = time.perf_counter() - t_start
    peak, kind = peak_memory(device)
    eff.update(eval_wall_seconds=wall, peak_memory_mb=peak, peak_memory_kind=kind, device=device,
               processes=sharding.world(),
               gpu_hours=wall / 3600.0 if device.startswith("cuda") else 0.0, precision=settings.precision)
    return Evaluation(sims, owner, metrics, eff, robust)


def evaluate_robustness(adapter: Adapter, spec: SplitSpec, settings: EvalSettings, request: RobustnessRequest,
                        clean_sims: np.ndarray | None = None, clean_owner: np.ndarray | None = None,
                        hooks: Hooks | None = None) -> dict[str, Any]:
    """A robustness pass of one model on a split: each side encoded once (the clean encodings), the clean
    matrix taken from the model's evaluation when given and of this split (else scored here), then every
    perturbation re-encodes only its side. The record says which clean matrix it compared with."""
    hooks = hooks or Hooks()
    check_precision(settings.precision, adapter.device)
    images, captions, owner = split_data(adapter, spec)
    batch, precision = settings.batch_size, settings.precision
    img = encode_images(adapter, images, batch_size=batch, precision=precision)
    txt = encode_texts(adapter, captions, batch_size=batch, precision=precision)
    default = DEFAULT_TILES[adapter.scoring]
    tiles = (settings.image_tile or default[0], settings.caption_tile or default[1])
    reused = clean_sims is not None and tuple(clean_sims.shape) == (len(images), len(captions)) and \
        (clean_owner is None or np.array_equal(clean_owner, owner))
    if reused:
        sims = np.asarray(clean_sims, dtype=np.float32)
    else:
        hooks.log("robustness: no stored clean matrix of this split; scoring it")
        sims = score_blocks(adapter, img, txt, image_tile=tiles[0], caption_tile=tiles[1], precision=precision)
    record = robustness_pass(adapter, images, captions, owner, clean_images=img, clean_texts=txt, clean_sims=sims,
                             request=request, batch_size=batch, precision=precision, tiles=tiles,
                             progress=hooks.progress)
    return {**record, "clean_matrix": "stored" if reused else "scored"}


def _evaluate_streamed(members: Sequence[Adapter], spec: SplitSpec, settings: EvalSettings, output: MatrixOutput,
                       hooks: Hooks, data: tuple[Any, list[str], np.ndarray], t_start: float) -> Evaluation:
    """One model's evaluation without its matrix: tiles streamed into a rank summary, saved, then the protocols."""
    images, captions, owner = data
    if len(members) != 1:
        raise SummaryError(f"--store-matrix {settings.store_matrix}: an ensemble of {len(members)} models averages "
                           "their matrices, which a streamed evaluation does not hold; use --store-matrix always")
    if sharding.world() > 1:
        raise SummaryError("--processes with a streamed evaluation (--store-matrix never) is not supported yet; "
                           "use one process or --store-matrix always")
    adapter = members[0]
    check_precision(settings.precision, adapter.device)
    t0 = time.perf_counter()
    img = encode_images(adapter, images, batch_size=settings.batch_size, precision=settings.precision)
    t1 = time.perf_counter()
    txt = encode_texts(adapter, captions, batch_size=settings.batch_size, precision=settings.precision)
    t2 = time.perf_counter()
    folds = 5 if "coco1k" in spec.protocols and len(images) % 5 == 0 and len(captions) % 5 == 0 else 1
    n_tiles = [0]

    def on_tile(a: int, c: int) -> None:
        n_tiles[0] += 1
        hooks.progress("scoring", n_tiles[0], n_tiles[0], f"tiles {n_tiles[0]}")
        hooks.on_tile()

    inputs = replace(protocol_inputs(None, owner, spec, settings, members, images, captions),  # type: ignore[arg-type]
                     matrix_shape=(len(images), len(captions)))
    names = wanted(spec.protocols, spec.table)
    coco = coco_collector(inputs, names, len(images), len(captions), spec.table)  # ECCV Caption / CxC top lists
    summary = stream_ranks(adapter, img, txt, owner, image_tile=settings.image_tile,
                           caption_tile=settings.caption_tile, precision=settings.precision, folds=folds,
                           on_tile=on_tile, coco=coco)
    scoring_seconds = time.perf_counter() - t2
    del img, txt
    if output.ranks is not None:
        summary.save(output.ranks)
    if output.owner is not None:
        save_npy(output.owner, np.asarray(owner, dtype=np.int64))
    inputs = replace(inputs, ranks=summary)
    metrics = run_protocols(inputs, names, on_protocol=lambda name: hooks.progress("metrics", 0, 1, name),
                            table=spec.table)
    wall = time.perf_counter() - t_start
    device = str(adapter.device)
    peak, kind = peak_memory(device)
    eff = {"variant": adapter.variant, "parameters": parameter_count(adapter.model),
           "encode_ms_per_image": 1000 * (t1 - t0) / max(1, len(images)),
           "encode_ms_per_caption": 1000 * (t2 - t1) / max(1, len(captions)), "scoring_seconds": scoring_seconds,
           "tiles": n_tiles[0], "precision": settings.precision, "matrix": "streamed (rank summary)",
           "eval_wall_seconds": wall, "peak_memory_mb": peak, "peak_memory_kind": kind, "device": device,
           "processes": 1, "gpu_hours": wall / 3600.0 if device.startswith("cuda") else 0.0}
    return Evaluation(None, owner, metrics, eff, ranks=summary)


def evaluate_matrix(sims: np.ndarray, owner: np.ndarray, spec: SplitSpec, settings: EvalSettings,
                    output: MatrixOutput | None = None, *, method: str = "the matrix", scoring: str = "embedding",
                    members: int = 1, efficiency: dict[str, Any] | None = None,
                    hooks: Hooks | None = None) -> Evaluation:
    """The protocols of an already computed matrix (an ensemble of stored member matrices, an imported
    matrix): saved first, then evaluated. Protocols needing a model's uni-modal space are not defined."""
    hooks = hooks or Hooks()
    save_matrix(sims, owner, output or MatrixOutput())
    metrics = run_protocols(protocol_inputs(sims, owner, spec, settings, None, method=method, scoring=scoring,
                                            n_members=members), wanted(spec.protocols, spec.table),
                            on_protocol=lambda name: hooks.progress("metrics", 0, 1, name), table=spec.table)
    return Evaluation(sims, owner, metrics, dict(efficiency or {}))


def save_matrix(sims: np.ndarray, owner: np.ndarray, output: MatrixOutput) -> None:
    if output.matrix is not None:
        save_npy(output.matrix, sims)
    if output.owner is not None:
        save_npy(output.owner, np.asarray(owner, dtype=np.int64))
