"""Our CUSA similarity matrix vs an independent reference that follows the official evaluation.

The reference below re-implements, from the raw state dict and without methods.cusa: the official
test-set order (rows grouped by image_id, ids sorted, captions in json order, `pre_caption`), CLIP's
evaluation transform, OpenAI's CLIP forward (sequence-first blocks, QuickGELU, full 77-token text,
EOT at argmax), the cross heads, and `evaluation.py`'s float32 normalise + matmul, in its own loops
(captions in chunks of 256, images in loader batches). The checkpoint is an official-layout container
of a tiny randomly initialised CLIP; the captions are CUSA's real example test json.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.data.demo_images import render_caption_images
from harness.eval.scoring import encode_images, encode_texts, score_blocks
from methods.cusa.adapter import CUSAAdapter
from methods.cusa.config import TINY_CLIP

DATA = Path(__file__).parent / "data" / "cusa" / "new_test.json"
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

# configs/vitb32/coco/cusa.yaml `loss_config` (values of the released config)
RELEASED_LOSS_CONFIG = {
    "contrastive": {"is_on": True, "is_block_tau": False, "tau": 0.05, "tau_min": 0.01, "tau_max": 0.10,
                    "rate": 1.00, "contrastive_loss_mode": "mean"},
    "cross_softlabel": {"is_on": True, "use_same_tau": True, "is_block_tau": False, "image_tau": 0.45,
                        "image_tau_min": 0.10, "image_tau_max": 0.99, "text_tau": 0.45, "text_tau_min": 0.10,
                        "text_tau_max": 0.99, "rate": 0.10, "use_loss": "kl", "contrastive_loss_mode": "mean",
                        "cross_softlabel_mode": "each", "use_same_softlabel_tau": True,
                        "is_block_softlabel_tau": True, "the_softlabel_image_tau": 1.00,
                        "the_softlabel_image_tau_min": 0.10, "the_softlabel_image_tau_max": 1.00,
                        "the_softlabel_text_tau": 1.00, "the_softlabel_text_tau_min": 0.10,
                        "the_softlabel_text_tau_max": 1.00},
    "uni_softlabel": {"is_on": True, "use_cross_softlabel_same_tau": False, "use_same_tau": False,
                      "is_block_tau": False, "image_tau": 0.45, "image_tau_min": 0.10, "image_tau_max": 1.00,
                      "text_tau": 0.45, "text_tau_min": 0.10, "text_tau_max": 1.00, "rate": 0.50, "use_loss": "kl",
                      "contrastive_loss_mode": "mean", "use_cross_softlabel_same_softlabel_tau": True,
                      "use_same_softlabel_tau": False, "is_block_softlabel_tau": True,
                      "the_softlabel_image_tau": 1.00, "the_softlabel_image_tau_min": 0.10,
                      "the_softlabel_image_tau_max": 1.00, "the_softlabel_text_tau": 1.00,
                      "the_softlabel_text_tau_min": 0.10, "the_softlabel_text_tau_max": 1.00},
}


# ---- the reference ------------------------------------------------------------------------------

def ref_pre_caption(caption: str, max_words: int = 64) -> str:
    caption = re.sub(r"([,.'!?\"()*#:;~])", " ", caption.lower()).replace("-", " ").replace("/", " ")
    caption = caption.replace("<person>", "person")
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def ref_test_set(json_path: Path) -> tuple[list[str], list[str], list[int]]:
    """(image paths, cleaned captions, caption -> image) as cross_coco_test_dataset builds them."""
    groups: dict[str, dict] = {}
    for row in json.loads(json_path.read_text()):
        g = groups.setdefault(row["image_id"], {"image_path": row["image_path"], "caption": []})
        g["caption"].append(ref_pre_caption(row["caption"]))
    paths, texts, txt2img = [], [], []
    for i, key in enumerate(sorted(groups)):
        paths.append(groups[key]["image_path"])
        for c in groups[key]["caption"]:
            texts.append(c)
            txt2img.append(i)
    return paths, texts, txt2img


def ref_preprocess(path: Path, n: int) -> torch.Tensor:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    long = int(n * max(w, h) / min(w, h))
    size = (n, long) if w <= h else (long, n)
    im = im.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - n) / 2.0)), int(round((size[1] - n) / 2.0))
    a = np.asarray(im.crop((left, top, left + n, top + n)), dtype=np.float32) / 255.0
    return torch.from_numpy((a - MEAN) / STD).permute(2, 0, 1)


def _ln(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-5)


def _block(x: torch.Tensor, sd: dict, p: str, mask: torch.Tensor | None) -> torch.Tensor:
    seq, n, d = x.shape  # sequence first, as OpenAI's Transformer
    heads = d // 64
    qkv = _ln(x, sd, p + ".ln_1") @ sd[p + ".attn.in_proj_weight"].T + sd[p + ".attn.in_proj_bias"]
    q, k, v = (t.reshape(seq, n * heads, d // heads).transpose(0, 1) for t in qkv.split(d, dim=-1))
    att = q @ k.transpose(1, 2) / (d // heads) ** 0.5
    if mask is not None:
        att = att + mask
    o = (att.softmax(-1) @ v).transpose(0, 1).reshape(seq, n, d)
    x = x + o @ sd[p + ".attn.out_proj.weight"].T + sd[p + ".attn.out_proj.bias"]
    h = _ln(x, sd, p + ".ln_2") @ sd[p + ".mlp.c_fc.weight"].T + sd[p + ".mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)
    return x + h @ sd[p + ".mlp.c_proj.weight"].T + sd[p + ".mlp.c_proj.bias"]


def _layers(sd: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def ref_image_features(sd: dict, pixels: torch.Tensor) -> torch.Tensor:
    p = "clip_model.visual."
    conv = sd[p + "conv1.weight"]
    x = F.conv2d(pixels, conv, stride=conv.shape[-1])
    x = x.reshape(x.shape[0], conv.shape[0], -1).permute(0, 2, 1)
    cls = sd[p + "class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = _ln(torch.cat([cls, x], dim=1) + sd[p + "positional_embedding"], sd, p + "ln_pre").permute(1, 0, 2)
    for i in range(_layers(sd, p + "transformer.resblocks.")):
        x = _block(x, sd, f"{p}transformer.resblocks.{i}", None)
    return _ln(x.permute(1, 0, 2)[:, 0], sd, p + "ln_post") @ sd[p + "proj"]


def ref_text_features(sd: dict, ids: torch.Tensor) -> torch.Tensor:
    p = "clip_model."
    x = (sd[p + "token_embedding.weight"][ids] + sd[p + "positional_embedding"]).permute(1, 0, 2)
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu_(1)
    for i in range(_layers(sd, p + "transformer.resblocks.")):
        x = _block(x, sd, f"{p}transformer.resblocks.{i}", mask)
    x = _ln(x.permute(1, 0, 2), sd, p + "ln_final")
    return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ sd[p + "text_projection"]


def ref_head(sd: dict, x: torch.Tensor, kind: str, modality: str) -> torch.Tensor:
    x = _ln(x, sd, f"ln_{kind}_{modality}_projection")
    return F.linear(x, sd[f"{kind}_{modality}_projection.weight"], sd[f"{kind}_{modality}_projection.bias"])


def clip_tokenize(texts: list[str]) -> torch.Tensor:
    """OpenAI `clip.tokenize` (context 77): open_clip ships the same BPE and gives the same ids."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=77)(texts).long()


@torch.no_grad()
def reference_sims(sd: dict, json_path: Path, image_size: int) -> np.ndarray:
    paths, texts, _ = ref_test_set(json_path)
    text_embeds = []
    for i in range(0, len(texts), 256):
        ids = clip_tokenize(texts[i:i + 256])
        text_embeds.append(ref_head(sd, ref_text_features(sd, ids), "cross", "text"))
    image_embeds = []
    for i in range(0, len(paths), 64):
        pix = torch.stack([ref_preprocess(json_path.parent / p, image_size) for p in paths[i:i + 64]])
        image_embeds.append(ref_head(sd, ref_image_features(sd, pix), "cross", "image"))
    img, txt = torch.cat(image_embeds), torch.cat(text_embeds)
    img = img / img.norm(dim=1, keepdim=True)
    txt = txt / txt.norm(dim=1, keepdim=True)
    return (img @ txt.t()).numpy()


# ---- fixtures -------------------------------------------------------------------------------------

def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Give layer norms, biases and temperatures non-default values so every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or p.dim() == 0:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            elif "ln" in name.split(".")[-2]:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))


def official_container(model: torch.nn.Module, save_path: str = "output/tiny/coco/cusa_seed23") -> dict:
    return {"model": OrderedDict((k, v.clone()) for k, v in model.state_dict().items()),
            "config": {"save_path": save_path, "dataset_name": "cross_coco", "data_path": "",
                       "clip_model": "tiny-test", "is_all_gather": False, "batch_size_train": 128,
                       "batch_size_test": 128, "batch_size_testall": 128, "loss_config": RELEASED_LOSS_CONFIG,
                       "logger_name": save_path + "/log", "model_name": save_path + "/checkpoints"},
            "epoch": 7, "best": 81.25, "best_epoch": 6}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    """Part of the real example json (its three images with 2, 6 and 2 captions included) beside synthetic
    stand-ins for its COCO images, a third of them not square."""
    root = tmp_path_factory.mktemp("cusa_data")
    rows = json.loads(DATA.read_text())
    rows = rows[:360] + rows[-12:]
    (root / "new_test.json").write_text(json.dumps(rows))
    groups: dict[str, list[str]] = {}
    path_of: dict[str, str] = {}
    for row in rows:
        groups.setdefault(row["image_id"], []).append(row["caption"])
        path_of[row["image_id"]] = row["image_path"]
    images = render_caption_images(list(groups.values()), size=48, seed=3)
    for n, (image_id, im) in enumerate(zip(groups, images)):
        if n % 3 == 1:
            im = im.resize((48, 64))
        elif n % 3 == 2:
            im = im.resize((70, 40))
        target = root / path_of[image_id]
        target.parent.mkdir(parents=True, exist_ok=True)
        im.save(target, format="PNG")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(11)
    built = CUSAAdapter.build("tiny", "coco", {"clip_config": TINY_CLIP})
    randomise(built.model)
    container = official_container(built.model)
    path = tmp_path_factory.mktemp("cusa_ckpt") / "checkpoint_best.pth"
    torch.save(container, path)
    return path, {k: v.float() for k, v in container["model"].items()}


# ---- tests ------------------------------------------------------------------------------------------

def test_similarity_matrix_matches_official_reference(dataset_root, checkpoint):
    path, state = checkpoint
    adapter = CUSAAdapter.load_official(path, dataset="coco")
    assert adapter.truncate_text  # ours cuts text at the batch's longest EOT; the reference runs 77 tokens
    images, captions = adapter.eval_data(dataset_root, "test")
    img = encode_images(adapter, images, batch_size=50)
    txt = encode_texts(adapter, captions, batch_size=96)
    ours = score_blocks(adapter, img, txt, image_tile=64, caption_tile=300)
    ref = reference_sims(state, dataset_root / "new_test.json", TINY_CLIP["vision_cfg"]["image_size"])
    n_images = len({r["image_id"] for r in json.loads((dataset_root / "new_test.json").read_text())})
    assert ours.shape == ref.shape == (n_images, 372)
    counts = np.bincount(adapter.eval_split(dataset_root, "test").image_of_caption)
    assert {2, 5, 6} <= set(counts.tolist())
    assert np.abs(ours - ref).max() < 1e-5
    # the rows/columns really follow the grouped order: each caption scores its own image's row
    _, _, txt2img = ref_test_set(dataset_root / "new_test.json")
    assert np.array_equal(adapter.eval_split(dataset_root, "test").image_of_caption, np.array(txt2img))


def test_truncated_text_encoding_equals_full_length(checkpoint):
    adapter = CUSAAdapter.load_official(checkpoint[0])
    captions = [r["caption"] for r in json.loads(DATA.read_text())[:300]]
    tokens = adapter.tokenize(captions)
    with torch.no_grad():
        short = adapter.encode_texts(tokens)
        adapter.truncate_text = False
        full = adapter.encode_texts(tokens)
    assert int(tokens.lengths.max()) < 40  # the truncated run really is shorter than 77 tokens
    assert torch.allclose(short, full, atol=1e-6, rtol=0)


def test_unimodal_embeddings_match_reference_heads(dataset_root, checkpoint):
    path, state = checkpoint
    adapter = CUSAAdapter.load_official(path)
    sentences = ["A man riding a wave on top of a surfboard.", "two dogs play in the snow !", "A red bus"]
    ours = adapter.text_embeddings(sentences)
    with torch.no_grad():  # the STS path: no caption cleaning, uni-modal text head
        ref = ref_head(state, ref_text_features(state, clip_tokenize(sentences)), "uni", "text")
    ref = ref / ref.norm(dim=1, keepdim=True)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
    paths, _, _ = ref_test_set(dataset_root / "new_test.json")
    pix = torch.stack([ref_preprocess(dataset_root / p, 32) for p in paths[:7]])
    ours_img = adapter.image_embeddings(adapter.eval_data(dataset_root, "test")[0][0:7])
    with torch.no_grad():
        ref_img = ref_head(state, ref_image_features(state, pix), "uni", "image")
    ref_img = ref_img / ref_img.norm(dim=1, keepdim=True)
    assert torch.allclose(ours_img, ref_img, atol=1e-5, rtol=0)
    # uni and cross heads are different functions of the same CLIP features
    assert not torch.allclose(ours_img, adapter.encode_images(pix), atol=1e-3)
