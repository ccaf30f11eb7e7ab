"""The table of evaluation protocols: what each needs, whether it applies, how it is computed, what it yields.

Every protocol is one `Protocol` object. Besides its needs and computation it declares its result: the
fields (metric paths) it stores with their direction (`Field`), its headline fields, the columns tables show
(the `metrics` command and the reports derive their layout from them), and the per-query values behind its
paired significance test (`PairedTest`, or None: no paired test). Nothing renders by a protocol's kind.

The built-in protocols are `PROTOCOLS`; a registry adds its own (`harness.spec.protocol_plugins`) and passes
the whole table down. An evaluation hands the table one `EvalInputs` (the matrix, the caption-to-image
mapping, where the evaluation came from, and lazy access to the model's uni-modal embeddings);
`run_protocols` asks each wanted protocol whether it applies and records either its result or
`{"defined": false, "reason": ...}`. A protocol that does not apply never fails an evaluation. `recall`
(full-split recall of whatever matrix was scored) applies to every evaluation and always runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.eval.metrics.ids import N_CAPTIONS as COCO5K_CAPTIONS
from harness.eval.metrics.ids import N_IMAGES as COCO5K_IMAGES
from harness.eval.metrics.ids import CocoTestIds, IdError
from harness.eval.metrics.per_query import rsum_per_image, rsum_per_image_in_folds
from harness.eval.metrics.recall import (
    MatrixError,
    check_shape,
    fold_recall,
    full_recall,
    owners,
    uniform_captions,
)

NOT_DEFINED = "defined"
F30K_IMAGES = 1000
COCO1K_FOLDS = 5
BOOTSTRAP = 1000  # resamples behind every recall interval


def not_defined(reason: str) -> dict[str, Any]:
    """The stored record of a protocol that does not apply to an evaluation."""
    return {"defined": False, "reason": reason}


def is_defined(result: Any) -> bool:
    return isinstance(result, Mapping) and result.get("defined", True) is not False


@dataclass(frozen=True)
class EvalInputs:
    """What one evaluation offers the protocols.

    `image_of_caption` is always explicit (caption j -> row); `test_split` says whether the split is the
    dataset's declared test split (paper protocols such as COCO 5K are defined only there). The embedding
    callables return None when the model has no such uni-modal space; they are called only by protocols
    that need them, at most once each.
    """

    sims: np.ndarray | None  # None: a streamed evaluation (see `ranks`)
    image_of_caption: np.ndarray
    dataset: str | None = None
    split: str = "test"
    test_split: bool = False
    data_root: Path | None = None
    ids_dir: Path | None = None  # folder with testall_ids.txt / testall_capids.txt (COCO ids of rows / columns)
    coco_ids: CocoTestIds | None = None  # COCO ids of a matrix's rows and (a subset of) its columns, when known
    coco_columns: np.ndarray | None = None  # the columns `coco_ids.caption_ids` describe (None: all, in order)
    method: str = "the matrix"
    scoring: str = "embedding"
    members: int = 1
    text_embeddings: Callable[[], np.ndarray | None] | None = None
    image_embeddings: Callable[[], np.ndarray | None] | None = None
    sentence_embedder: Callable[[Sequence[str]], np.ndarray] | None = None
    image_retrieval: Callable[[Path], dict[str, Any]] | None = None
    data_folders: Mapping[str, Path] = field(default_factory=dict)  # protocol name -> its own data folder
    bootstrap: int = BOOTSTRAP
    ranks: Any = None  # a streamed evaluation's RankSummary (harness.eval.streaming) when `sims` is None
    matrix_shape: tuple[int, int] | None = None  # (images, captions) of a streamed evaluation before its summary
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        if self.sims is None and self.ranks is not None:
            return self.ranks.shape
        if self.sims is None and self.matrix_shape is not None:
            return self.matrix_shape
        return int(self.sims.shape[0]), int(self.sims.shape[1])

    @property
    def captions_per_image(self) -> int | None:
        """k when caption j belongs to image j // k for every caption, else None."""
        if "k" not in self._cache:
            self._cache["k"] = uniform_captions(self.image_of_caption, self.shape[0])
        return self._cache["k"]

    def embeddings(self, kind: str) -> np.ndarray | None:
        """Text or image embeddings of the model (computed once, None where the model has none)."""
        if kind not in self._cache:
            fn = self.text_embeddings if kind == "text" else self.image_embeddings
            self._cache[kind] = fn() if fn is not None else None
        return self._cache[kind]


@dataclass(frozen=True)
class Field:
    """One number a protocol's result stores: its metric path ("i2t.r1", "rsum") and its direction."""

    path: str
    higher_is_better: bool = True


PerQueryValues = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray | None]"]


@dataclass(frozen=True)
class PairedTest:
    """The per-query values behind a protocol's paired significance test.

    `values(sims, image_of_caption)` gives (one value per resampled unit, strata or None) whose mean is the
    stored value of `field`; two rows are compared by resampling the same units (within strata)."""

    field: str
    values: PerQueryValues
    unit: str = "images, each with its caption queries"  # what is resampled, in words (report footnotes)


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: its needs (in words), the rule that decides whether it applies, the
    computation, and its declared result (fields, headline, columns, paired test)."""

    name: str
    title: str
    needs: str
    applies: Callable[[EvalInputs], str | None]  # None when it applies, else the reason it is not defined
    compute: Callable[[EvalInputs], dict[str, Any]]
    headline: tuple[str, ...]  # the fields summaries headline
    fields: tuple[Field, ...] = ()  # the numbers it stores (empty: open-ended, whatever the result holds)
    columns: tuple[str, ...] | None = None  # report columns (None: every number the stored results hold)
    cli_columns: tuple[str, ...] | None = None  # `metrics` / `evaluate` table columns (None: `columns`)
    paired: PairedTest | None = None  # per-query values of its paired significance test (None: no test)
    uses_matrix: bool = True
    coco_ids: bool = False  # needs the COCO ids of the matrix's rows and columns (from ids files or CUSA's json)
    data_folder: str | None = None  # the data folder it needs, in words; given as --data-folder <name>=DIR (keyed by
    # the protocol's name, in EvalInputs.data_folders), which also asks for the protocol
    statistic: str | None = None  # where the numbers papers report are stored ("sts.stsb" -> "spearman.stsb")

    @property
    def table_columns(self) -> tuple[str, ...] | None:
        """The columns the command-line table shows (None: a summary of whatever the result holds)."""
        return self.cli_columns if self.cli_columns is not None else self.columns

    def field(self, path: str) -> Field | None:
        return next((f for f in self.fields if f.path == path), None)

    def higher_is_better(self, path: str) -> bool:
        f = self.field(path)
        return True if f is None else f.higher_is_better


def declaration_problem(proto: Any) -> str | None:
    """Why `proto` is not a usable Protocol declaration (None when it is)."""
    if not isinstance(proto, Protocol):
        return f"is a {type(proto).__name__}, not a harness.eval.protocols.Protocol"
    if not proto.name or not isinstance(proto.name, str) or not proto.name.replace("_", "").isalnum():
        return f"has name {proto.name!r}; a protocol name is letters, digits and underscores"
    if not callable(proto.applies) or not callable(proto.compute):
        return "needs callables `applies(inputs)` and `compute(inputs)`"
    paths = [f.path for f in proto.fields]
    if not paths:
        return None if proto.columns is None and proto.paired is None else \
            "declares columns or a paired test but no fields; list its fields (Field(path, higher_is_better))"
    if len(set(paths)) != len(paths):
        return f"declares a field twice ({', '.join(paths)})"
    for what, names in (("headline", proto.headline), ("columns", proto.columns or ()),
                        ("cli_columns", proto.cli_columns or ())):
        unknown = [n for n in names if n not in paths]
        if unknown:
            return f"{what} {', '.join(unknown)} not among its fields ({', '.join(paths)})"
    if proto.paired is not None:
        if not isinstance(proto.paired, PairedTest) or not callable(proto.paired.values):
            return "paired must be a PairedTest(field, values) with a callable values(sims, image_of_caption)"
        if proto.paired.field not in paths:
            return f"paired test field {proto.paired.field!r} not among its fields ({', '.join(paths)})"
    return None


# ---- applicability rules ------------------------------------------------------------------------------------

def _needs_test_split(inp: EvalInputs, what: str) -> str | None:
    if not inp.test_split:
        where = f"{inp.dataset}'s test split" if inp.dataset else "a dataset's declared test split"
        return f"{what} is defined on {where}; this evaluation scored split '{inp.split}'"
    return None


def _needs_images(inp: EvalInputs, n: int, what: str) -> str | None:
    if inp.shape[0] != n:
        return f"{what} needs {n} images, this matrix has {inp.shape[0]} (a subset or another split)"
    return None


def _applies_full(n_images: int, n_captions: int | None, what: str) -> Callable[[EvalInputs], str | None]:
    def rule(inp: EvalInputs) -> str | None:
        reason = _needs_test_split(inp, what) or _needs_images(inp, n_images, what)
        if reason is None and n_captions is not None and inp.captions_per_image is not None \
                and inp.shape[1] != n_captions:
            reason = f"{what} needs {n_captions} captions, this matrix has {inp.shape[1]}"
        return reason
    return rule


def _applies_coco1k(inp: EvalInputs) -> str | None:
    what = "COCO 1K (5 folds of 1000 images)"
    reason = _needs_test_split(inp, what) or _needs_images(inp, COCO5K_IMAGES, what)
    if reason is None and inp.captions_per_image != 5:
        reason = f"{what} folds need exactly 5 captions per image in image order; this split has " + (
            "an uneven number of captions per image" if inp.captions_per_image is None
            else f"{inp.captions_per_image} per image")
    return reason


def _coco_ids(inp: EvalInputs) -> tuple[CocoTestIds | None, str | None]:
    """COCO ids of the matrix (from the evaluation, the ids files or the package order), or why there are none."""
    if inp.coco_ids is not None:
        return inp.coco_ids, None
    if inp.shape != (COCO5K_IMAGES, COCO5K_CAPTIONS) or inp.captions_per_image != 5:
        return None, (f"needs the COCO 5K test matrix ({COCO5K_IMAGES} x {COCO5K_CAPTIONS}, 5 captions per image) "
                      f"or COCO caption ids for its columns; got {inp.shape[0]} x {inp.shape[1]}")
    from harness.eval.metrics.ids import load_coco_test_ids

    return load_coco_test_ids(inp.ids_dir, warn=False), None


def _applies_coco_ids(what: str) -> Callable[[EvalInputs], str | None]:
    def rule(inp: EvalInputs) -> str | None:
        reason = _needs_test_split(inp, what)
        if reason is None and inp.dataset not in (None, "coco") and inp.coco_ids is None:
            reason = f"{what} is defined on the COCO 5K test images, not on dataset '{inp.dataset}'"
        if reason is None:
            try:
                _, why = _coco_ids(inp)
            except IdError as exc:
                why = str(exc)
            reason = None if why is None else f"{what} {why}"
        return reason
    return rule


def _applies_sts(inp: EvalInputs) -> str | None:
    if inp.data_folders.get("sts") is None:
        return "STS needs the SentEval data folder (--data-folder sts=DIR)"
    if inp.members != 1:
        return "STS needs one model with a uni-modal text space; an ensemble averages several"
    if inp.sentence_embedder is None:
        return f"{inp.method} scores pairs by cross attention: it has no uni-modal text space"
    return None


def _applies_image_retrieval(inp: EvalInputs) -> str | None:
    if inp.data_folders.get("image_retrieval") is None:
        return "image retrieval needs the CUB / SOP / In-shop / iNaturalist folder (--data-folder image_retrieval=DIR)"
    if inp.members != 1:
        return "an ensemble of several models has no single uni-modal image space"
    if inp.image_retrieval is None:
        return f"{inp.method} has no image encoder to run on image files (it reads precomputed region features)"
    return None


# ---- computations -------------------------------------------------------------------------------------------

def _full(inp: EvalInputs) -> dict[str, Any]:
    return full_recall(inp.sims, image_of_caption=inp.image_of_caption, bootstrap=inp.bootstrap)


def _coco1k(inp: EvalInputs) -> dict[str, Any]:
    return fold_recall(inp.sims, COCO1K_FOLDS, 5, bootstrap=inp.bootstrap)


def coco_ids_of(inp: EvalInputs) -> CocoTestIds:
    """COCO ids of an evaluation's rows and COCO columns; a MatrixError says why there are none."""
    ids, why = _coco_ids(inp)
    if ids is None:
        raise MatrixError(str(why))
    return ids


def _coco_matrix(inp: EvalInputs) -> tuple[np.ndarray | None, CocoTestIds, Any]:
    """(matrix of the COCO columns, ids, None), or (None, ids, top lists) for a streamed evaluation."""
    ids = coco_ids_of(inp)
    if inp.sims is None:
        return None, ids, inp.ranks.coco
    sims = inp.sims if inp.coco_columns is None else inp.sims[:, inp.coco_columns]
    return sims, ids, None


def _eccv(inp: EvalInputs) -> dict[str, Any]:
    from harness.eval.metrics.eccv import eccv_protocol

    sims, ids, tops = _coco_matrix(inp)
    return eccv_protocol(sims, ids, bootstrap=inp.bootstrap, tops=tops)


def _cxc(inp: EvalInputs) -> dict[str, Any]:
    from harness.eval.metrics.cxc import cxc_protocol

    sims, ids, tops = _coco_matrix(inp)
    text = image = None
    if inp.members == 1 and inp.scoring == "embedding":
        text, image = inp.embeddings("text"), inp.embeddings("image")
        if text is not None and inp.coco_columns is not None:
            text = text[inp.coco_columns]
    out = cxc_protocol(sims, ids, text, image, scoring=inp.scoring, method=inp.method, bootstrap=inp.bootstrap,
                       tops=tops)
    if inp.members != 1 and inp.scoring == "embedding":
        for task in ("t2t", "i2i"):
            out[task] = not_defined("an ensemble of several models has no single uni-modal space")
    return out


def _sts(inp: EvalInputs) -> dict[str, Any]:
    from harness.eval.metrics.sts import sts_evaluate

    assert inp.sentence_embedder is not None and inp.data_folders.get("sts") is not None
    return sts_evaluate(inp.sentence_embedder, inp.data_folders["sts"])


def _image_retrieval(inp: EvalInputs) -> dict[str, Any]:
    assert inp.image_retrieval is not None and inp.data_folders.get("image_retrieval") is not None
    return inp.image_retrieval(inp.data_folders["image_retrieval"])


RECALL_HEADLINE = ("i2t.r1", "i2t.r5", "i2t.r10", "t2i.r1", "t2i.r5", "t2i.r10", "rsum")
RECALL_FIELDS = (*(Field(f"{d}.r{k}") for d in ("i2t", "t2i") for k in (1, 5, 10)), Field("rsum"),
                 *(Field(f"{d}.{m}", higher_is_better=False) for d in ("i2t", "t2i") for m in ("medr", "meanr")))
RECALL_CLI = ("i2t.r1", "i2t.r5", "i2t.r10", "i2t.medr", "i2t.meanr",
              "t2i.r1", "t2i.r5", "t2i.r10", "t2i.medr", "t2i.meanr", "rsum")
RSUM_TEST = PairedTest("rsum", rsum_per_image)


def _recall_protocol(name: str, title: str, needs: str, applies: Callable[[EvalInputs], str | None],
                     compute: Callable[[EvalInputs], dict[str, Any]], folds: int | None = None) -> Protocol:
    paired = RSUM_TEST if folds is None else PairedTest(
        "rsum", rsum_per_image_in_folds(folds), "images, each with its caption queries, within each fold")
    return Protocol(name, title, needs, applies, compute, RECALL_HEADLINE, fields=RECALL_FIELDS,
                    columns=RECALL_HEADLINE, cli_columns=RECALL_CLI, paired=paired)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    _recall_protocol("recall", "recall over the full matrix",
                     "any images x captions matrix with its caption-to-image mapping", lambda inp: None, _full),
    _recall_protocol("coco1k", "COCO 1K (mean of 5 folds)",
                     "the COCO 5K test matrix (5000 images, 5 captions each, image order): 5 folds of 1000 images",
                     _applies_coco1k, _coco1k, folds=COCO1K_FOLDS),
    _recall_protocol("coco5k", "COCO 5K", "the COCO 5K test split: 5000 images and their captions",
                     _applies_full(COCO5K_IMAGES, COCO5K_CAPTIONS, "COCO 5K"), _full),
    _recall_protocol("f30k1k", "Flickr30K 1K", "the Flickr30K test split: 1000 images and their captions",
                     _applies_full(F30K_IMAGES, 5 * F30K_IMAGES, "Flickr30K 1K"), _full),
    Protocol("eccv", "ECCV Caption", "the COCO 5K test matrix with COCO ids of its rows and columns "
             "(testall_ids.txt / testall_capids.txt, or the eccv_caption package order)",
             _applies_coco_ids("ECCV Caption"), _eccv,
             ("i2t.eccv_map_at_r", "i2t.eccv_rprecision", "i2t.eccv_r1", "t2i.eccv_map_at_r",
              "t2i.eccv_rprecision", "t2i.eccv_r1"), coco_ids=True),
    Protocol("cxc", "CxC (Crisscrossed Captions)",
             "the COCO 5K test matrix with COCO ids (i2t / t2i); t2t / i2i also need the model's uni-modal text "
             "and image embeddings", _applies_coco_ids("CxC"), _cxc,
             ("i2t.cxc_r1", "t2i.cxc_r1", "t2t.cxc_r1", "i2i.cxc_r1"), coco_ids=True),
    Protocol("sts", "STS (SentEval)",
             "one model with a uni-modal text space and the SentEval folder (--data-folder sts=DIR)",
             _applies_sts, _sts, ("avg",), uses_matrix=False, data_folder="the SentEval data folder",
             statistic="spearman"),
    Protocol("image_retrieval", "image-to-image retrieval (R@1)",
             "one pixel model with a uni-modal image head and the CUB / SOP / In-shop / iNaturalist folder "
             "(--image-retrieval-root)", _applies_image_retrieval, _image_retrieval, ("avg",),
             uses_matrix=False, data_folder="the CUB / SOP / In-shop / iNaturalist folder", statistic="r1"),
)}
ALWAYS = ("recall",)
# the recall protocol a summary (the report's efficiency plot) prefers when a result holds several
HEADLINE_PREFERENCE = ("coco5k", "f30k1k", "coco1k", "recall")


Table = Mapping[str, Protocol]


def protocol(name: str, table: Table | None = None) -> Protocol:
    """The protocol `name` of `table` (default: the built-ins); an unknown name is an error that suggests the
    nearest one."""
    table = PROTOCOLS if table is None else table
    if name not in table:
        near = difflib.get_close_matches(name, table, n=1, cutoff=0.5)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise MatrixError(f"unknown protocol '{name}'; valid: {', '.join(table)}.{hint} A protocol of your own "
                          "comes from a registry file's `protocols:` section (--registry FILE)")
    return table[name]


def asked_by_folders(folders: Mapping[str, Any], table: Table | None = None) -> tuple[str, ...]:
    """Protocols asked for by giving their data folder (`--data-folder NAME=DIR`): the names in `folders`
    (protocol name -> folder) of protocols that declare a `data_folder`."""
    table = PROTOCOLS if table is None else table
    return tuple(n for n, p in table.items() if p.data_folder and folders.get(n))


def wanted(declared: Iterable[str], table: Table | None = None) -> list[str]:
    """The protocols an evaluation runs: `recall` first, then the dataset's declared ones in table order."""
    table = PROTOCOLS if table is None else table
    names = set(declared) | set(ALWAYS)
    return [n for n in table if n in names] + sorted(names - set(table))  # unknown names: errors when run


def run_protocols(inputs: EvalInputs, names: Iterable[str],
                  on_protocol: Callable[[str], None] | None = None, table: Table | None = None) -> dict[str, Any]:
    """{name: result or not_defined(reason)} for every protocol in `names` (unknown names are errors).

    Data problems met while computing (a malformed ids file, a missing SentEval file) are recorded as "not
    defined" with the problem, so one missing annotation never discards the other protocols' results.
    """
    out: dict[str, Any] = {}
    for name in names:
        proto = protocol(name, table)
        reason = proto.applies(inputs)
        if reason is not None:
            out[name] = not_defined(reason)
            continue
        if on_protocol is not None:
            on_protocol(name)
        try:
            if inputs.sims is None and proto.uses_matrix:
                from harness.eval.summary_metrics import from_summary

                out[name] = from_summary(name, proto.title, inputs, proto.compute)
                continue
            out[name] = proto.compute(inputs)
        except (ValueError, OSError) as exc:  # the readers' and metrics' own errors name the file
            out[name] = not_defined(f"{proto.title} could not be computed: {exc}")
    return out


def compute_protocol(name: str, sims: np.ndarray, image_of_caption: np.ndarray | None = None, *,
                     captions_per_image: int = 5, bootstrap: int = BOOTSTRAP, matrix_name: str = "similarity matrix",
                     table: Table | None = None,
                     **inputs: Any) -> dict[str, Any]:
    """One protocol of a stored matrix (the `metrics` command; tests). A protocol that does not apply is a
    MatrixError with the reason. The matrix is taken to be of a dataset's test split. `matrix_name` (the
    file) names the matrix in shape errors."""
    sims = np.asarray(sims)
    if sims.ndim != 2:
        raise MatrixError(f"{matrix_name}: expected a 2-D images x captions matrix, got shape {sims.shape}")
    check_shape(*sims.shape, captions_per_image if image_of_caption is None else None, matrix_name)
    owner = (np.arange(sims.shape[1]) // captions_per_image) if image_of_caption is None \
        else owners(*sims.shape, image_of_caption=image_of_caption, name=matrix_name)
    inp = EvalInputs(sims=sims, image_of_caption=owner, test_split=True, bootstrap=bootstrap, **inputs)
    proto = protocol(name, table)
    reason = proto.applies(inp)
    if reason is not None:
        raise MatrixError(f"{name} is not defined for this matrix: {reason}")
    return {"protocol": name, **proto.compute(inp)}
