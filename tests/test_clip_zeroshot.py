"""Zero-shot CLIP (methods/clip_zeroshot): the registry section, weights from a file or the open_clip cache (never
downloaded), embeddings equal to open_clip's own, `evaluate --checkpoint` on the demo images, and the demo run.

Every model here is a tiny random CLIP (methods.cusa.config.TINY_CLIP); nothing reaches the network."""

from __future__ import annotations

import copy
import json
import urllib.request

import numpy as np
import open_clip
import open_clip.factory
import open_clip.pretrained
import pytest
import torch
from PIL import Image
from plan_helpers import plan_of

from harness.api import CheckpointError
from harness.cli.app import main as cli_main
from harness.data.demo import build_demo_images
from harness.spec.registry import RegistryError, load_registry, parse_registry
from methods.clip_zeroshot.adapter import ClipZeroShotAdapter
from methods.clip_zeroshot.model import VARIANTS, ClipSpec, cached_weights
from methods.cusa.config import TINY_CLIP

CAPTIONS = ["a red bus on the street", "a brown dog on the grass", "A man, holding a kite!"]
FAKE_MODEL = "itrbench-tiny-test"  # registered with open_clip for one test (a ViT-B-32 file would be 350 MB)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to download fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args} {kwargs}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", refuse)


def tiny_open_clip(seed: int = 1) -> open_clip.CLIP:
    torch.manual_seed(seed)
    return open_clip.CLIP(embed_dim=TINY_CLIP["embed_dim"], vision_cfg=dict(TINY_CLIP["vision_cfg"]),
                          text_cfg=dict(TINY_CLIP["text_cfg"]), quick_gelu=True).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny CLIP's full open_clip state dict (logit_scale included) as .bin and .safetensors, and the model."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip_weights")
    clip = tiny_open_clip()
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    torch.save(state, folder / "tiny.bin")
    save_file(state, str(folder / "tiny.safetensors"))
    return folder, clip


def pixels(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---- registry ----------------------------------------------------------------------------------------------

def test_registry_section_is_a_zero_shot_baseline_with_the_code_variants():
    m = load_registry().method("clip_zeroshot")
    assert m.baseline is True
    assert m.adapter_class() is ClipZeroShotAdapter and ClipZeroShotAdapter.image_input == "pixels"
    assert set(m.variants) == set(VARIANTS)
    for name, v in m.variants.items():
        assert v.options["zero_shot"] is True
        assert {k: v.options[k] for k in ("model", "pretrained") if k in v.options} == \
            {k: VARIANTS[name][k] for k in ("model", "pretrained") if k in VARIANTS[name]}
    for large in ("vitb32_openai", "vitl14_336_openai"):
        assert m.recipe(large, "demo").get("skip")
        assert not m.recipe(large, "coco").get("skip") and not m.recipe(large, "f30k").get("skip")
    assert not m.recipe("tiny", "demo").get("skip") and m.recipe("tiny", "coco").get("skip")
    assert {"weights", "cache_dir"} <= set(m.recipe_keys)
    assert load_registry().reported_for("clip_zeroshot") == []  # none of the five papers prints zero-shot CLIP
    assert not any(load_registry().method(n).baseline for n in ("esa", "esl", "xdim", "vsl", "cusa"))


def test_baseline_flag_must_be_true_or_false():
    doc = {"datasets": {"d": {"split": "test", "protocols": ["recall"]}},
           "methods": {"m": {"title": "M", "adapter": "x:Y", "baseline": "yes", "variants": {"v": {}}}}}
    with pytest.raises(RegistryError, match=r"methods.m.baseline: expected true or false, found 'yes'"):
        parse_registry(doc)
    doc["methods"]["m"]["baseline"] = True
    assert parse_registry(doc).method("m").baseline is True
    del doc["methods"]["m"]["baseline"]
    assert parse_registry(doc).method("m").baseline is False


# ---- the model ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["bin", "safetensors"])
def test_embeddings_equal_open_clip_with_the_same_weights(weights, suffix):
    folder, clip = weights
    adapter = ClipZeroShotAdapter.build("tiny", "demo", {"weights": str(folder / f"tiny.{suffix}")})
    assert adapter.weights == folder / f"tiny.{suffix}"
    with torch.no_grad():
        want_img = clip.encode_image(pixels(), normalize=True)
        want_txt = clip.encode_text(open_clip.tokenize(CAPTIONS), normalize=True)
        with adapter._inference():
            got_img = adapter.encode_images(pixels())
            got_txt = adapter.encode_texts(adapter.tokenize(CAPTIONS))
    torch.testing.assert_close(got_img, want_img, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_txt, want_txt, rtol=0, atol=1e-6)  # raw captions: no CUSA caption cleaning
    torch.testing.assert_close(adapter.score(got_img, got_txt), want_img @ want_txt.t())
    torch.testing.assert_close(adapter.text_embeddings(CAPTIONS), want_txt, rtol=0, atol=1e-6)
    torch.testing.assert_close(adapter.image_embeddings(pixels()), want_img, rtol=0, atol=1e-6)


def test_load_official_reads_weights_in_a_builtin_geometry(weights, tmp_path):
    folder, clip = weights
    adapter = ClipZeroShotAdapter.load_official(folder / "tiny.bin", variant="tiny", dataset="demo")
    with torch.no_grad(), adapter._inference():
        torch.testing.assert_close(adapter.encode_images(pixels()), clip.encode_image(pixels(), normalize=True))
    with pytest.raises(CheckpointError, match="name the clip_zeroshot variant"):
        ClipZeroShotAdapter.load_official(folder / "tiny.bin", variant=None)
    other = copy.deepcopy(TINY_CLIP)
    other["text_cfg"]["layers"] = 3
    torch.save(open_clip.CLIP(embed_dim=64, vision_cfg=other["vision_cfg"], text_cfg=other["text_cfg"]).state_dict(),
               tmp_path / "deeper.bin")
    with pytest.raises(CheckpointError, match="deeper.bin"):  # another geometry: refused, naming the file
        ClipZeroShotAdapter.load_official(tmp_path / "deeper.bin", variant="tiny")


def test_random_tiny_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = ClipZeroShotAdapter.build("tiny", "demo", {}), ClipZeroShotAdapter.build("tiny", "demo", {"seed": 0})
    c = ClipZeroShotAdapter.build("tiny", "demo", {"seed": 1})
    assert torch.equal(torch.get_rng_state(), state)
    assert a.weights is None and ClipZeroShotAdapter.weights_file("tiny") is None
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.model.state_dict().values(), c.model.state_dict().values()))


def test_missing_weights_name_where_they_were_looked_for(tmp_path):
    with pytest.raises(CheckpointError) as err:
        ClipZeroShotAdapter.build("vitb32_openai", "coco", {"cache_dir": str(tmp_path)})
    text = str(err.value)
    assert "\n" not in text
    assert str(tmp_path / "models--timm--vit_base_patch32_clip_224.openai") in text  # the hub cache
    assert str(tmp_path / "ViT-B-32.pt") in text  # open_clip's URL cache
    assert "--set clip_zeroshot.weights=FILE" in text and "create_model('ViT-B-32', pretrained='openai')" in text
    with pytest.raises(CheckpointError, match="no local weights"):
        ClipZeroShotAdapter.weights_file("vitl14_336_openai", {"cache_dir": str(tmp_path)})
    with pytest.raises(CheckpointError, match=r"nope.bin: no such CLIP weights file"):
        ClipZeroShotAdapter.build("vitb32_openai", "coco", {"weights": str(tmp_path / "nope.bin")})


def _fake_hub_file(cache: object, repo: str, name: str, payload: dict) -> None:
    """A Hugging Face hub cache entry as hf_hub_download leaves it (refs/main -> snapshots/<commit>/<name>)."""
    from safetensors.torch import save_file

    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0123abcd")
    (base / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(payload, str(base / "snapshots" / "0123abcd" / name))


def test_weights_come_from_the_open_clip_cache(weights, tmp_path, monkeypatch):
    folder, clip = weights
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, FAKE_MODEL, copy.deepcopy(TINY_CLIP))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, FAKE_MODEL, {
        "hub": {"hf_hub": "someone/tiny-clip/", "quick_gelu": True},
        "url": {"url": "https://example.invalid/weights/tiny-url.pt", "quick_gelu": True}})
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    _fake_hub_file(tmp_path, "someone/tiny-clip", "open_clip_model.safetensors", state)
    torch.save(state, tmp_path / "tiny-url.pt")
    opts = {"model": FAKE_MODEL, "cache_dir": str(tmp_path)}

    found, _ = cached_weights(FAKE_MODEL, "hub", tmp_path)
    assert found is not None and found.name == "open_clip_model.safetensors"
    assert cached_weights(FAKE_MODEL, "url", tmp_path)[0] == tmp_path / "tiny-url.pt"
    for tag in ("hub", "url"):
        adapter = ClipZeroShotAdapter.build("mine", "coco", {**opts, "pretrained": tag})
        with torch.no_grad(), adapter._inference():
            torch.testing.assert_close(adapter.encode_images(pixels()), clip.encode_image(pixels(), normalize=True))
    with pytest.raises(CheckpointError, match="no local weights"):  # another cache folder: not found, not fetched
        ClipZeroShotAdapter.build("mine", "coco", {**opts, "pretrained": "hub", "cache_dir": str(tmp_path / "x")})


def test_unknown_or_downloading_models_are_refused():
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-B-33'; did you mean ViT-B-32"):
        ClipSpec.of("x", {"model": "ViT-B-33", "pretrained": "openai"})
    with pytest.raises(ValueError, match="no pretrained tag 'opnai' for ViT-B-32; valid: openai"):
        ClipSpec.of("x", {"model": "ViT-B-32", "pretrained": "opnai"})
    with pytest.raises(ValueError, match="Hugging Face"):
        ClipSpec.of("x", {"model": "xlm-roberta-base-ViT-B-32", "pretrained": "laion5b_s13b_b90k"})
    with pytest.raises(ValueError, match="hub and local-dir schemas"):
        ClipSpec.of("x", {"model": "hf-hub:someone/clip"})
    with pytest.raises(ValueError, match="give options model"):
        ClipSpec.of("my_variant", {})
    spec = ClipSpec.of("vitb32_openai", {})
    assert (spec.model, spec.pretrained, spec.quick_gelu) == ("ViT-B-32", "openai", True)  # as open_clip builds it
    assert ClipSpec.of("x", {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}).quick_gelu is False


def test_training_is_refused():
    with pytest.raises(ValueError, match="zero-shot baseline: it is evaluated, never trained"):
        ClipZeroShotAdapter.build("tiny", "demo", {}).configure_training({"epochs": 1})


# ---- through the harness -------------------------------------------------------------------------------------

def test_evaluate_checkpoint_on_the_demo_images(weights, tmp_path, one_thread):
    folder, _ = weights
    build_demo_images(tmp_path / "data")
    out = tmp_path / "metrics.json"
    rc = cli_main(["evaluate", "--method", "clip_zeroshot", "--variant", "tiny", "--dataset", "demo",
                   "--data-root", str(tmp_path / "data"), "--checkpoint", str(folder / "tiny.safetensors"),
                   "--save-sims", str(tmp_path / "sims.npy"), "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["shape"] == [200, 1000]
    assert 0 <= result["metrics"]["recall"]["rsum"] <= 600
    assert np.load(tmp_path / "sims.npy").shape == (200, 1000)


def test_images_get_the_evaluation_transform_of_the_tag(tmp_path, monkeypatch):
    from harness.api import clip_preprocess
    from methods.clip_zeroshot.model import preprocess_for

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, FAKE_MODEL, copy.deepcopy(TINY_CLIP))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, FAKE_MODEL, {
        "openai_stats": {"file": str(tmp_path / "w.bin")},
        "half": {"file": str(tmp_path / "w.bin"), "mean": (0.5,) * 3, "std": (0.5,) * 3}})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    want = clip_preprocess(32)(image)
    torch.testing.assert_close(ClipZeroShotAdapter.build("tiny", "demo", {}).preprocess(image), want)
    torch.testing.assert_close(preprocess_for(ClipSpec.of("x", {"model": FAKE_MODEL, "pretrained": "openai_stats"}),
                                              32)(image), want)
    half = preprocess_for(ClipSpec.of("x", {"model": FAKE_MODEL, "pretrained": "half"}), 32)(image)
    torch.testing.assert_close(half, open_clip.image_transform(32, is_train=False, mean=(0.5,) * 3,
                                                               std=(0.5,) * 3)(image))
    assert not torch.allclose(half, want)


def test_demo_run_plans_one_evaluation_and_reports_the_baseline(tmp_path, one_thread):
    plan = plan_of(load_registry(), ["clip_zeroshot"], "demo", data_fp="x", code="y")
    assert [(j.stage, j.variant) for j in plan.jobs] == [("evaluate", "tiny")]
    assert any("vitb32_openai" in n for n in plan.notes)  # skipped on the demo, with the reason
    rc = cli_main(["run", "--methods", "clip_zeroshot", "--dataset", "demo", "--results", str(tmp_path / "results"),
                   "--reports", str(tmp_path / "reports"), "--data-root", str(tmp_path / "data")])
    assert rc == 0
    metrics = (tmp_path / "results" / "demo" / "clip_zeroshot-tiny-zeroshot" / "eval" / "metrics.json")
    assert metrics.is_file()
    report = (tmp_path / "reports" / "demo.md").read_text()
    assert "clip_zeroshot" in report and "baseline" in report
