"""CUSA checkpoints: official key layout and shapes, strict and safe loading, config translation."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from test_cusa_equivalence import RELEASED_LOSS_CONFIG, official_container, randomise

from harness.api import CheckpointError
from methods.cusa.adapter import CUSAAdapter
from methods.cusa.config import TINY_CLIP, clip_config, standard_loss_config
from methods.cusa.model import CUSAModel
from methods.cusa.official import (
    clip_config_from_state,
    loss_config_from_official,
    loss_config_to_official,
)


def meta_state(variant: str, objective: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return CUSAModel(clip_config(variant), standard_loss_config(objective)).state_dict()


@pytest.mark.parametrize(("variant", "objective", "keys", "params"), [
    ("vitb32", "cusa", 322, 152_332_037), ("vitb32", "only_contrastive", 310, 151_804_673),
    ("vitl14_336", "cusa", 466, 430_312_709), ("vitl14_336", "only_contrastive", 454, 429_128_449)])
def test_state_dict_has_the_official_keys_and_sizes(variant, objective, keys, params):
    state = meta_state(variant, objective)
    assert len(state) == keys
    assert sum(v.numel() for v in state.values()) == params
    names = list(state)
    temps = ["tau", "cross_tau", "cross_the_softlabel_tau", "uni_tau_image", "uni_tau_text"]
    assert names[:5 if objective == "cusa" else 1] == (temps if objective == "cusa" else ["tau"])
    assert "clip_model.logit_scale" not in state
    assert names[-16 if objective == "cusa" else -8:][:4] == [
        "ln_cross_image_projection.weight", "ln_cross_image_projection.bias",
        "ln_cross_text_projection.weight", "ln_cross_text_projection.bias"]
    # the architecture is recoverable from the shapes alone, as OpenAI's build_model does
    assert clip_config_from_state(state, "x") == clip_config(variant)


def test_vitl14_336_shapes():
    s = meta_state("vitl14_336", "cusa")
    assert tuple(s["clip_model.visual.positional_embedding"].shape) == (577, 1024)
    assert tuple(s["clip_model.visual.conv1.weight"].shape) == (1024, 3, 14, 14)
    assert tuple(s["clip_model.visual.proj"].shape) == (1024, 768)
    assert tuple(s["clip_model.transformer.resblocks.11.attn.in_proj_weight"].shape) == (2304, 768)
    assert "clip_model.visual.transformer.resblocks.23.mlp.c_fc.weight" in s
    assert tuple(s["uni_text_projection.weight"].shape) == (768, 768)
    assert s["tau"].shape == ()


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[CUSAAdapter, dict, Path]:
    torch.manual_seed(5)
    adapter = CUSAAdapter.build("tiny", "coco", {"clip_config": TINY_CLIP})
    randomise(adapter.model, seed=5)
    container = official_container(adapter.model)
    path = tmp_path / "checkpoint_best.pth"
    torch.save(container, path)
    return adapter, container, path


def test_load_official_restores_weights_config_and_info(tiny):
    adapter, container, path = tiny
    loaded = CUSAAdapter.load_official(path, dataset="coco")
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    assert loaded.objective == "cusa" and loaded.dataset == "coco" and loaded.variant == "tiny-test"
    assert loaded.checkpoint_info == {"epoch": 7, "best": 81.25, "best_epoch": 6}
    assert loaded.model.cross_the_softlabel_tau.requires_grad is False  # is_block_softlabel_tau
    assert loaded.model.tau.requires_grad is True
    again = loaded.official_checkpoint(epoch=8)
    assert again["config"] == container["config"] and again["epoch"] == 8
    assert list(again["model"]) == list(container["model"])


def _save(tmp_path: Path, container: dict, name: str = "bad.pth") -> Path:
    path = tmp_path / name
    torch.save(container, path)
    return path


def test_missing_and_unexpected_keys_are_named(tiny, tmp_path):
    _, container, _ = tiny
    c = copy.deepcopy(container)
    del c["model"]["uni_text_projection.bias"]
    with pytest.raises(CheckpointError, match=r"bad\.pth.*missing keys \[uni_text_projection\.bias\]"):
        CUSAAdapter.load_official(_save(tmp_path, c))
    c = copy.deepcopy(container)
    c["model"]["clip_model.logit_scale"] = torch.tensor(4.6)
    with pytest.raises(CheckpointError, match=r"unexpected keys \[clip_model\.logit_scale\]"):
        CUSAAdapter.load_official(_save(tmp_path, c))
    c = copy.deepcopy(container)
    c["config"]["loss_config"]["uni_softlabel"]["is_on"] = False  # only_contrastive config, cusa weights
    with pytest.raises(CheckpointError, match=r"unexpected keys \[ln_uni_image_projection\.bias"):
        CUSAAdapter.load_official(_save(tmp_path, c))


def test_wrong_variant_dataset_or_container_is_refused(tiny, tmp_path):
    _, container, path = tiny
    with pytest.raises(CheckpointError, match=r"a 'tiny-test' checkpoint, not variant vitb32"):
        CUSAAdapter.load_official(path, variant="vitb32")
    c = copy.deepcopy(container)
    c["config"]["clip_model"] = "ViT-B/32"  # claims B/32 but holds tiny weights
    with pytest.raises(CheckpointError, match=r"CLIP geometry .* not the ViT-B/32 geometry"):
        CUSAAdapter.load_official(_save(tmp_path, c), variant="vitb32")
    with pytest.raises(CheckpointError, match=r"trained on coco .*not f30k"):
        CUSAAdapter.load_official(path, dataset="f30k")
    with pytest.raises(CheckpointError, match=r"lacks \['config'\]"):
        CUSAAdapter.load_official(_save(tmp_path, {"model": container["model"]}))
    with pytest.raises(CheckpointError, match=r"no such checkpoint"):
        CUSAAdapter.load_official(tmp_path / "absent.pth")


class _Payload:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pickled_code_in_a_checkpoint_is_not_run(tiny, tmp_path):
    _, container, _ = tiny
    target = tmp_path / "pwned"
    c = dict(container, extra=_Payload(str(target)))
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        CUSAAdapter.load_official(_save(tmp_path, c))
    assert not target.exists()


def test_official_config_translation_handles_every_tau_sharing_flag():
    # configs/test.yaml: separate image/text temperatures everywhere, uni teacher taus of its own
    lc = copy.deepcopy(RELEASED_LOSS_CONFIG)
    lc["cross_softlabel"].update(use_same_tau=False, image_tau=0.45, image_tau_min=0.02, image_tau_max=0.80,
                                 text_tau=0.48, text_tau_min=0.03, text_tau_max=0.97, use_same_softlabel_tau=False,
                                 is_block_softlabel_tau=False)
    lc["uni_softlabel"].update(is_block_tau=True, image_tau=0.51, text_tau=0.58,
                               use_cross_softlabel_same_softlabel_tau=False, use_same_softlabel_tau=True)
    cfg = loss_config_from_official(lc)
    t = {x.name: x for x in cfg.temperatures}
    assert list(t) == ["tau", "cross_tau_image", "cross_tau_text", "cross_the_softlabel_tau_image",
                       "cross_the_softlabel_tau_text", "uni_tau_image", "uni_tau_text", "uni_the_softlabel_tau"]
    assert (t["cross_tau_text"].init, t["cross_tau_text"].low, t["cross_tau_text"].high) == (0.48, 0.03, 0.97)
    assert t["uni_tau_image"].learnable is False and t["cross_the_softlabel_tau_image"].learnable is True
    assert cfg.roles["usa_teacher_text"] == "uni_the_softlabel_tau" and cfg.roles["csa_t2i"] == "cross_tau_text"
    model = CUSAModel(TINY_CLIP, cfg)
    assert [k for k in model.state_dict() if "." not in k] == list(t)
    # the released layout: shared temperatures, clamp ranges averaged over image/text
    lc = copy.deepcopy(RELEASED_LOSS_CONFIG)
    lc["cross_softlabel"].update(image_tau_min=0.08, text_tau_min=0.12)
    shared = {x.name: x for x in loss_config_from_official(lc).temperatures}
    assert shared["cross_tau"].low == pytest.approx(0.10)


def test_standard_layout_round_trips_through_the_official_schema():
    for objective in ("cusa", "only_contrastive", "csa", "usa"):
        cfg = standard_loss_config(objective, {"csa_weight": 0.3, "tau": 0.07})
        back = loss_config_from_official(loss_config_to_official(cfg))
        assert back.temperatures == cfg.temperatures, objective
        assert dict(back.roles) == dict(cfg.roles)
        assert (back.itc_weight, back.csa_weight, back.usa_weight) == (cfg.itc_weight, 0.3, cfg.usa_weight)
    released = loss_config_from_official(RELEASED_LOSS_CONFIG)
    assert released.temperatures == standard_loss_config("cusa").temperatures


def test_built_model_writes_a_checkpoint_the_loader_reads(tmp_path):
    torch.manual_seed(2)
    adapter = CUSAAdapter.build("tiny", "f30k", {"clip_config": TINY_CLIP, "objective": "only_contrastive"})
    adapter.recipe = {"epochs": 40, "save_path": "output/tiny/flickr/only_contrastive"}
    path = _save(tmp_path, adapter.official_checkpoint(epoch=3), "checkpoint_03.pth")
    loaded = CUSAAdapter.load_official(path, dataset="f30k")
    assert loaded.objective == "only_contrastive"
    assert loaded.official["schedular"]["epochs"] == 40
    assert set(loaded.model.state_dict()) == set(adapter.model.state_dict())


def test_reduced_geometry_of_a_variant_is_declared_in_the_checkpoint(tmp_path):
    adapter = CUSAAdapter.build("vitb32", "demo", {"clip_config": TINY_CLIP, "objective": "only_contrastive"})
    container = adapter.official_checkpoint(epoch=1)
    assert container["config"]["clip_model"] == "ViT-B/32"
    assert container["config"]["itrbench_clip_config"] == TINY_CLIP
    loaded = CUSAAdapter.load_official(_save(tmp_path, container), variant="vitb32")
    assert loaded.variant == "vitb32" and loaded.model.image_size == 32
    del container["config"]["itrbench_clip_config"]  # undeclared: tiny weights under a ViT-B/32 name
    with pytest.raises(CheckpointError, match="CLIP geometry"):
        CUSAAdapter.load_official(_save(tmp_path, container), variant="vitb32")


def test_pretrained_clip_weights_load_strictly_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    from methods.cusa.model import build_clip

    torch.manual_seed(9)
    clip = build_clip(TINY_CLIP)
    state = {k: v.clone() for k, v in clip.state_dict().items()}
    torch.save({**state, "logit_scale": torch.tensor(4.6), "input_resolution": torch.tensor(32)}, tmp_path / "w.pt")
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        adapter = CUSAAdapter.build("tiny", "coco", {"clip_config": TINY_CLIP, "clip_weights": str(tmp_path / name)})
        for k, v in state.items():
            assert torch.equal(adapter.model.clip_model.state_dict()[k], v), (name, k)
    torch.save({k: v for k, v in state.items() if k != "ln_final.bias"}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial\.pt: CLIP weights .*missing keys \[ln_final\.bias\]"):
        CUSAAdapter.build("tiny", "coco", {"clip_config": TINY_CLIP, "clip_weights": str(tmp_path / "partial.pt")})
