"""`evaluate --perturb image` on a pixel method: a tiny zero-shot CLIP on the demo images (image files),
the corrupted images re-encoded against the clean caption encodings."""

from __future__ import annotations

import json

import numpy as np
from test_clip_zeroshot import no_network, weights  # noqa: F401  (fixtures)

from harness.cli.app import main as cli_main
from harness.data.demo import build_demo_images


def test_perturb_image_on_the_demo_images(weights, tmp_path, one_thread):  # noqa: F811
    folder, _ = weights
    build_demo_images(tmp_path / "data")
    runs = []
    for name in ("a",):  # one run: same-seed determinism is checked on the text path and below
        out = tmp_path / name / "metrics.json"
        rc = cli_main(["evaluate", "--method", "clip_zeroshot", "--variant", "tiny", "--dataset", "demo",
                       "--data-root", str(tmp_path / "data"), "--checkpoint", str(folder / "tiny.safetensors"),
                       "--recall-only", "--perturb", "zoom_blur@5,gaussian_noise@5,keyboard@3",
                       "--save-sims", str(tmp_path / name / "sims.npy"), "--json", str(out)])
        assert rc == 0
        runs.append(json.loads(out.read_text())["robustness"])
    rows = runs[0]["perturbations"]
    assert {rows[k]["modality"] for k in rows} == {"image", "text"}
    for key in ("zoom_blur@5", "gaussian_noise@5"):
        r = rows[key]
        assert r.get("defined", True) and r["level"] in ("blur", "noise")
        assert r["drop"]["rsum"] == runs[0]["clean"]["rsum"] - r["rsum"]
    assert runs[0]["summary"]["image"]["perturbations"] == 2
    assert rows["gaussian_noise@5"]["rsum"] != runs[0]["clean"]["rsum"]  # the encoder did see other pixels


def test_corrupted_views_are_the_same_twice(tmp_path):
    import torch

    from harness.data.cusa_json import load_cusa_split, load_image
    from harness.eval.perturb.image import CorruptedImages

    build_demo_images(tmp_path / "data")
    split = load_cusa_split(tmp_path / "data" / "demo" / "cusa", "test")
    def to_tensor(im):
        return torch.from_numpy(np.asarray(im).copy())

    views = [CorruptedImages(split.image_paths[:3], to_tensor, "shot_noise", 4, 0, load_image) for _ in range(2)]
    assert torch.equal(views[0][0:3], views[1][0:3])
    assert not torch.equal(views[0][0:1], to_tensor(load_image(split.image_paths[0]))[None])


def test_demo_run_with_perturb_shows_a_robustness_section(tmp_path, one_thread):
    rc = cli_main(["run", "--methods", "clip_zeroshot", "--dataset", "demo", "--results", str(tmp_path / "results"),
                   "--reports", str(tmp_path / "reports"), "--data-root", str(tmp_path / "data"),
                   "--perturb", "keyboard@2,pixelate@4"])
    assert rc == 0
    folder = tmp_path / "results" / "demo" / "clip_zeroshot-tiny-zeroshot"
    record = json.loads((folder / "robust" / "metrics.json").read_text())["robustness"]
    assert set(record["summary"]) == {"text", "image", "all"}
    report = (tmp_path / "reports" / "demo.md").read_text()
    section = report.split("## Robustness", 1)[1].split("\n## ", 1)[0]
    assert "`keyboard@2`" in section and "`pixelate@4`" in section and "clip_zeroshot/tiny (zeroshot" in section
    assert (tmp_path / "reports" / "plots" / "demo-robustness.png").is_file()
    assert report.count("| clip_zeroshot/tiny") >= 1


def test_perturb_image_on_a_cusa_checkpoint(tmp_path, one_thread):
    """`evaluate --perturb image` on CUSA: an official-format checkpoint (tiny geometry, declared in its config) on
    the demo image files; corrupted images are re-encoded, the clean text encodings reused, drops add up."""
    import torch

    from methods.cusa.adapter import CUSAAdapter
    from methods.cusa.config import TINY_CLIP

    torch.manual_seed(3)
    adapter = CUSAAdapter.build("vitb32", "demo", {"clip_config": TINY_CLIP, "objective": "cusa"})
    ck = tmp_path / "checkpoint_best.pth"
    torch.save(adapter.official_checkpoint(epoch=1), ck)
    build_demo_images(tmp_path / "data")
    out = tmp_path / "metrics.json"
    rc = cli_main(["evaluate", "--method", "cusa", "--variant", "vitb32", "--dataset", "demo", "--data-root",
                   str(tmp_path / "data"), "--checkpoint", str(ck), "--recall-only", "--perturb",
                   "gaussian_noise@5,contrast@4", "--json", str(out)])
    assert rc == 0
    record = json.loads(out.read_text())["robustness"]
    rows = record["perturbations"]
    assert set(rows) == {"gaussian_noise@5", "contrast@4"} and {r["modality"] for r in rows.values()} == {"image"}
    for r in rows.values():
        assert r["drop"]["rsum"] == record["clean"]["rsum"] - r["rsum"]
    assert any(r["rsum"] != record["clean"]["rsum"] for r in rows.values())
