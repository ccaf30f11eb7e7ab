"""ESA adapter vs an independent official-style evaluation on the same official-layout checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference_esa import official_similarity

from harness.api import add_prefix, strip_prefix
from methods.common.text_bert import BERT_BASE_UNCASED, minilm_dir
from methods.esa import ESAAdapter

CAPTIONS = [
    "A man riding a skateboard down the side of a half-pipe.",
    "Two dogs play in the snow",
    "a plate of food with broccoli , rice and chicken",
    "A red double-decker bus parked near the curb .",
    "the zxqv is flibbertigibbet",
    "People walking",
    "A cat sleeping on a laptop keyboard.",
    "An old steam train pulls into the station while people wait on the platform",
    "Kids playing soccer in the park.",
    "A woman holding an umbrella in the rain",
    "a giraffe",
    "Three surfers ride a big wave at sunset ; the sky is orange.",
    "Café tables outside a bakery",
    "A dog catches a frisbee in mid-air!",
    "a bowl of fruit",
    "Several motorcycles parked in a row along the street.",
    "A boy with a kite",
    "An airplane flying over a city skyline",
    "a close up of a pizza with pepperoni and mushrooms",
    "Two men playing tennis on a clay court",
]
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64)
IMG_DIM = 64


def randomize(adapter: ESAAdapter, seed: int = 0) -> None:
    """Non-zero biases and non-trivial BatchNorm statistics, so every weight influences the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for m in adapter.model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 36, IMG_DIM)).astype(np.float32)


def ours_similarity(adapter: ESAAdapter, imgs: np.ndarray, captions: list[str]) -> np.ndarray:
    """Each image encoded once, in blocks; captions in blocks; scored on block slices (as the harness)."""
    img_block = torch.cat([adapter.encode_images(imgs[i:i + 3]) for i in range(0, len(imgs), 3)])
    tokens = adapter.tokenize(captions)
    txt_block = torch.cat([adapter.encode_texts(tokens[i:i + 6]) for i in range(0, len(captions), 6)])
    rows = [torch.cat([adapter.score(img_block[i:i + 2], txt_block[j:j + 8])
                       for j in range(0, len(captions), 8)], dim=1) for i in range(0, len(imgs), 2)]
    return torch.cat(rows).numpy()


def save_official(adapter: ESAAdapter, path, prefix: str) -> dict:
    container = adapter.official_checkpoint(epoch=5, best_rsum=123.4, Eiters=77)
    if prefix == "module":
        container["model"] = [add_prefix(strip_prefix(s)) for s in container["model"]]
    elif prefix == "none":
        container["model"] = [strip_prefix(s) for s in container["model"]]
    torch.save(container, path)
    return torch.load(path, weights_only=False)  # the reference reads the file as the official code


@pytest.mark.parametrize("variant,dataset,prefix", [
    ("bigru", "coco", "none"), ("bigru", "f30k", "module"),
    ("bert", "coco", "module"), ("bert", "f30k", "none"),
])
def test_matches_official_style_reference(tmp_path, variant, dataset, prefix):
    options = dict(embed_size=32, img_dim=IMG_DIM, word_dim=16, bert=TINY_BERT)
    adapter = ESAAdapter.build(variant, dataset, options)
    randomize(adapter)
    path = tmp_path / "model_best.pth"
    container = save_official(adapter, path, prefix)
    loaded = ESAAdapter.load_official(path, variant=variant, dataset=dataset)
    imgs = images(len(CAPTIONS) // 5)
    ours = ours_similarity(loaded, imgs, CAPTIONS)
    bert_config = {**BERT_BASE_UNCASED, **TINY_BERT} if variant == "bert" else None
    ref = official_similarity(container, imgs, CAPTIONS, bert_config=bert_config)
    assert ours.shape == ref.shape == (4, 20)
    assert np.abs(ours - ref).max() <= 1e-5
    assert ref.std() > 1e-3  # not a degenerate matrix
    # the loaded model is the written one, not a fresh random init
    fresh = ours_similarity(ESAAdapter.build(variant, dataset, options), imgs, CAPTIONS)
    assert np.abs(fresh - ref).max() > 1e-3


def test_matches_reference_with_pretrained_minilm(tmp_path):
    adapter = ESAAdapter.build("bert", "demo", dict(embed_size=48, img_dim=IMG_DIM, bert="minilm"))
    randomize(adapter, seed=1)
    path = tmp_path / "minilm.pth"
    container = save_official(adapter, path, "as_written")
    loaded = ESAAdapter.load_official(path, variant="bert", dataset="demo")
    imgs = images(2, seed=3)
    caps = CAPTIONS[:10]
    config = json.loads((minilm_dir() / "config.json").read_text())
    config = {k: v for k, v in config.items() if k in BERT_BASE_UNCASED}
    ref = official_similarity(container, imgs, caps, bert_config=config)
    assert np.abs(ours_similarity(loaded, imgs, caps) - ref).max() <= 1e-5
