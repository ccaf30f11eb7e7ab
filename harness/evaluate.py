"""Evaluate official (or our own) checkpoints: load, encode once, score blockwise, compute protocols."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.adapter import Adapter, parameter_count
from harness.metrics.recall import recall_metrics
from harness.precision import check_precision
from harness.registry import Method, RegistryError, load_registry
from harness.scoring import encode_images, encode_texts, eval_mode, score_blocks

RECALL_PROTOCOLS = ("coco1k", "coco5k", "f30k1k", "recall")


@dataclass
class Evaluation:
    sims: np.ndarray
    metrics: dict[str, Any]
    efficiency: dict[str, Any] = field(default_factory=dict)


def load_members(method: Method, variant: str, checkpoints: Sequence[str | Path],
                 dataset: str | None) -> list[Adapter]:
    """Load one adapter per checkpoint. An ensemble variant takes one checkpoint per member."""
    spec = method.variant(variant)
    cls = method.adapter_class()
    if spec.is_ensemble:
        if len(checkpoints) != len(spec.members):
            raise RegistryError(f"{method.name}/{variant} averages {len(spec.members)} models "
                                f"({', '.join(spec.members)}): pass --checkpoint once per member, in that order "
                                f"(got {len(checkpoints)})")
        same = len(set(spec.members)) == 1
        members = [cls.load_official(ck, variant=None if same else m, dataset=dataset)
                   for ck, m in zip(checkpoints, spec.members)]
        if same and len({a.variant for a in members}) > 1:
            raise RegistryError(f"{method.name}/{variant}: the members must be models of one variant, got "
                                + ", ".join(f"{ck} ({a.variant})" for ck, a in zip(checkpoints, members)))
        return members
    if len(checkpoints) != 1:
        raise RegistryError(f"{method.name}/{variant} is a single model: pass exactly one --checkpoint")
    return [cls.load_official(checkpoints[0], variant=variant, dataset=dataset)]


def protocols_for(dataset: str | None, split: str, n_images: int) -> list[str]:
    """The recall protocols that apply to this dataset/split (others fall back to plain full recall)."""
    if dataset is None:
        return ["coco1k", "coco5k"] if n_images == 5000 else (["f30k1k"] if n_images == 1000 else ["recall"])
    registry = load_registry()
    ds = registry.dataset(dataset)
    if split != ds.split:
        return ["recall"]
    chosen = [p for p in ds.protocols if p in RECALL_PROTOCOLS]
    return chosen or ["recall"]


def compute_metrics(sims: np.ndarray, protocols: Sequence[str],
                    image_of_caption: np.ndarray | None = None) -> dict[str, Any]:
    """Every recall protocol of `protocols` (others are computed by their own modules)."""
    return {p: recall_metrics(sims, p, image_of_caption=image_of_caption) for p in protocols
            if p in RECALL_PROTOCOLS}


def unimodal_embeddings(adapter: Adapter, images: Any, captions: Sequence[str],
                        batch_size: int = 128) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(text, image) vectors in the method's uni-modal spaces, or None where the method has none.

    Adapters with dedicated uni-modal heads (CUSA) return them; other embedding methods use their joint
    embedding; cross-attention scorers have none (CxC t2t / i2i and STS are then "not defined").
    """
    if adapter.scoring != "embedding":
        return None, None
    with eval_mode(adapter):
        text = adapter.text_embeddings(list(captions))
    text = encode_texts(adapter, captions, batch_size) if text is None else text
    image = None
    chunks = []
    with eval_mode(adapter):
        for a in range(0, len(images), batch_size):
            chunk = images[a:a + batch_size]
            x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)) if isinstance(chunk, np.ndarray) \
                else (chunk if isinstance(chunk, torch.Tensor) else torch.stack(list(chunk)))
            emb = adapter.image_embeddings(x.to(adapter.device))
            if emb is None:
                break
            chunks.append(emb.cpu())
    image = torch.cat(chunks) if chunks else encode_images(adapter, images, batch_size)
    return text.float().cpu().numpy(), image.float().cpu().numpy()


def extra_protocols(sims: np.ndarray, members: Sequence[Adapter], images: Any, captions: Sequence[str],
                    protocols: Sequence[str], ids_dir: Path | None, sts_root: Path | None = None,
                    batch_size: int = 128) -> dict[str, Any]:
    """ECCV Caption and CxC (COCO 5K matrices of 25,000 captions) and STS (when SentEval data is given; it
    does not depend on the matrix, so it also runs for CUSA's json test set of 25,010 captions)."""
    out: dict[str, Any] = {}
    coco5k = sims.shape == (5000, 25000)
    single = members[0] if len(members) == 1 else None
    text_emb = image_emb = None
    if coco5k and "cxc" in protocols and single is not None:
        text_emb, image_emb = unimodal_embeddings(single, images, captions, batch_size)
    if coco5k and "eccv" in protocols:
        from harness.metrics.eccv import eccv_protocol

        out["eccv"] = eccv_protocol(sims, ids_dir)
    if coco5k and "cxc" in protocols:
        from harness.metrics.cxc import cxc_protocol

        scoring = members[0].scoring
        out["cxc"] = cxc_protocol(sims, ids_dir, text_emb, image_emb, scoring=scoring, method=members[0].method)
        if single is None and scoring == "embedding":
            for task in ("t2t", "i2i"):
                out["cxc"][task] = {"defined": False,
                                    "reason": "an ensemble of two models has no single uni-modal space"}
    if sts_root is not None:
        out["sts"] = sts_protocol(single, sts_root) if single is not None else {
            "defined": False, "reason": "STS needs one model with a uni-modal text space"}
    return out


def _image_vectors(adapter: Adapter, images: Any, batch_size: int) -> np.ndarray | None:
    """Uni-modal image embeddings of a lazy pixel view, or None when the adapter has no such head."""
    chunks = []
    with eval_mode(adapter):
        for a in range(0, len(images), batch_size):
            emb = adapter.image_embeddings(images[a:a + batch_size].to(adapter.device))
            if emb is None:
                return None
            chunks.append(emb.float().cpu())
    return torch.cat(chunks).numpy()


def image_retrieval_metrics(members: Sequence[Adapter], root: str | Path, batch_size: int = 128) -> dict[str, Any]:
    """CUSA's image retrieval protocol (R@1 on CUB-200, SOP, In-shop, iNaturalist and their mean) with the
    model's uni-modal image head (`Adapter.image_embeddings`) on image files under `root`.

    Not defined (with a reason) for ensembles and for methods that read region features or have no
    uni-modal image head. Sets whose list file is absent are left out and named under `missing`; `avg`
    needs all four. A present set with missing images is an error.
    """
    from harness.data.image_retrieval import (
        ImageFiles,
        ImageRetrievalDataError,
        check_image_retrieval,
        load_image_retrieval,
        present_sets,
    )
    from harness.metrics.image_retrieval import image_retrieval_protocol

    if len(members) != 1:
        return {"defined": False, "reason": "an ensemble of several models has no single uni-modal image space"}
    adapter = members[0]
    transform = getattr(adapter, "preprocess", None)
    if adapter.image_input != "pixels" or transform is None:
        return {"defined": False, "reason": f"{adapter.method} reads precomputed region features, not image files: "
                                            "it has no image encoder to run on the retrieval sets"}
    names, absent = present_sets(root)
    if not names:
        raise ImageRetrievalDataError(f"{root}: no image retrieval set found (" + "; ".join(absent.values()) + ")")
    problems = check_image_retrieval(root, tuple(names))
    if problems:
        raise ImageRetrievalDataError(f"{root}: " + "; ".join(problems))
    features: dict[str, tuple] = {}
    for name in names:
        ds = load_image_retrieval(root, name)
        query = _image_vectors(adapter, ImageFiles(ds.paths, transform), batch_size)
        if query is None:
            return {"defined": False, "reason": f"{adapter.method} has no uni-modal image head"}
        if ds.has_gallery:
            gallery = _image_vectors(adapter, ImageFiles(ds.gallery_paths or [], transform), batch_size)
            features[name] = (query, ds.labels, gallery, ds.gallery_labels)
        else:
            features[name] = (query, ds.labels)
    out = image_retrieval_protocol(features)
    if absent:
        out["missing"] = absent
    return out


def sts_protocol(adapter: Adapter, root: Path) -> dict[str, Any]:
    """STS12-16 / STS-B / SICK-R with the method's uni-modal text vectors (cosine, Spearman x 100)."""
    from harness.metrics.sts import sts_evaluate

    if adapter.scoring != "embedding":
        return {"defined": False, "reason": f"{adapter.method} scores pairs by cross attention: no text space"}

    def embed(sentences: Sequence[str]) -> np.ndarray:
        text, _ = unimodal_embeddings(adapter, np.zeros((0, 1, 1), np.float32), sentences)
        return text

    return sts_evaluate(embed, root)


def similarity_for(members: Sequence[Adapter], images: Any, captions: Sequence[str], *, batch_size: int = 128,
                   cache_dir: Path | None = None, progress: bool = False,
                   precision: str = "fp32") -> tuple[np.ndarray, dict[str, Any]]:
    """The (mean, for ensembles) similarity matrix and the efficiency record of computing it."""
    total = None
    eff: dict[str, Any] = {"members": []}
    for k, adapter in enumerate(members):
        t0 = time.perf_counter()
        img = encode_images(adapter, images, batch_size=batch_size, precision=precision)
        t1 = time.perf_counter()
        txt = encode_texts(adapter, captions, batch_size=batch_size, precision=precision)
        t2 = time.perf_counter()
        cache = cache_dir / f"tiles_{k}.h5" if cache_dir else None
        sims = score_blocks(adapter, img, txt, cache=cache, progress=progress, precision=precision)
        t3 = time.perf_counter()
        eff["members"].append({
            "variant": adapter.variant, "parameters": parameter_count(adapter.model),
            "encode_ms_per_image": 1000 * (t1 - t0) / max(1, len(images)),
            "encode_ms_per_caption": 1000 * (t2 - t1) / max(1, len(captions)),
            "scoring_seconds": t3 - t2,
        })
        total = sims.astype(np.float64) if total is None else total + sims
    mean = (total / len(members)).astype(np.float32)
    eff["precision"] = precision
    eff["parameters"] = sum(m["parameters"] for m in eff["members"])
    eff["scoring_seconds"] = sum(m["scoring_seconds"] for m in eff["members"])
    eff["encode_ms_per_image"] = sum(m["encode_ms_per_image"] for m in eff["members"])
    eff["encode_ms_per_caption"] = sum(m["encode_ms_per_caption"] for m in eff["members"])
    return mean, eff


def evaluate_checkpoints(method: str, variant: str, checkpoints: Sequence[str | Path], data_root: str | Path,
                         split: str, dataset: str | None = None, *, device: str = "cpu", batch_size: int = 128,
                         cache_dir: Path | None = None, progress: bool = False, sts_root: Path | None = None,
                         all_protocols: bool = True, image_retrieval_root: Path | None = None,
                         precision: str = "fp32") -> Evaluation:
    """Load, score and compute every protocol that applies; `sts_root` / `image_retrieval_root` add STS and
    image retrieval (uni-modal heads; skipped with `all_protocols=False`)."""
    check_precision(precision, device)
    registry = load_registry()
    m = registry.method(method)
    members = [a.to(device) for a in load_members(m, variant, checkpoints, dataset)]
    images, captions = members[0].eval_data(data_root, split, dataset)
    sims, eff = similarity_for(members, images, captions, batch_size=batch_size, cache_dir=cache_dir,
                               progress=progress, precision=precision)
    owner = members[0].image_of_caption(data_root, split, dataset)
    metrics = compute_metrics(sims, protocols_for(dataset, split, sims.shape[0]), owner)
    if all_protocols:
        wanted = load_registry().dataset(dataset).protocols if dataset else ("eccv", "cxc")
        ids_dir = _ids_dir(data_root, split, dataset)
        metrics.update(extra_protocols(sims, members, images, captions, wanted, ids_dir, sts_root, batch_size))
        if image_retrieval_root is not None:
            metrics["image_retrieval"] = image_retrieval_metrics(members, image_retrieval_root, batch_size)
    return Evaluation(sims=sims, metrics=metrics, efficiency=eff)


def _ids_dir(data_root: str | Path, split: str, dataset: str | None) -> Path | None:
    """The folder holding testall_ids.txt / testall_capids.txt, if the data has them."""
    from harness.data.precomp import candidate_dirs

    for d in [*candidate_dirs(data_root, dataset), Path(data_root) / (dataset or "coco") / "cxc_annots"]:
        if (d / f"{split}_ids.txt").is_file() or (d / f"{split}_capids.txt").is_file():
            return d
    return None
