"""What ESL and X-Dim share: both come from the same vse_infty-derived code base (BUTD regions + BERT
words, no pooling) and score every image-caption pair with a cross-attention head (`sim_vec`).

- `PairwiseAdapter`: tokenisation, encoding, blockwise batched scoring, and the training pieces
  (AdamW with four parameter groups, region dropping, word masking, hinge triplet loss with hardest
  negatives after the warm-up epochs).
- Official container helpers: {epoch, model: [img_enc, txt_enc, sim_vec], best_rsum, opt, Eiters},
  every key prefixed `module.` (DataParallel); the head kind is told from the `sim_vec` key names.

A model class used here provides `image_side(regions)`, `text_side(ids)`, `pair_scores(image_side,
text_side, lengths)` and `train_scores(regions, ids, lengths)`.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from methods.base import Adapter, CheckpointError, PaddedFeatures, PaddedTokens, TrainingSetup
from methods.common.augment import augment_word_pieces
from methods.common.checkpoint import add_prefix, load_container, opt_dict, require_keys, strip_prefix
from methods.common.text_bert import bert_tokenize, bert_tokenizer, bert_word_pieces, pad_ids
from methods.common.triplet import hardest_negative_at, triplet_costs

DEFAULT_RECIPE: dict[str, Any] = dict(
    lr=5e-4, lr_decay_epochs=[15], lr_decay=0.1, margin=0.2, warmup_epochs=1, grad_clip=2.0,
    region_keep=0.8, word_aug_prob=0.2, weight_decay=1e-4, bert_lr_factor=0.1,
)
# Scoring chunks per device type: (elements of the largest intermediate, captions per chunk). On CPU
# small chunks keep the intermediates in cache (measured fastest); on GPUs large ones fill the device.
SCORE_CHUNKS = {"cpu": (1 << 19, 32), "cuda": (1 << 25, 512)}


@dataclass
class PairwiseTrainBatch:
    """B images (regions dropped and zero-padded, the padding is not masked) and B augmented captions."""

    images: torch.Tensor  # (B, R', D) float32
    image_lengths: torch.Tensor  # (B,) kept regions (unused by the models, as in the official code)
    tokens: PaddedTokens

    def to(self, device: torch.device | str) -> PairwiseTrainBatch:
        return PairwiseTrainBatch(self.images.to(device), self.image_lengths.to(device), self.tokens.to(device))


def drop_regions(images: torch.Tensor, keep_prob: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each region iff a uniform draw is > 1 - keep_prob (official: rand > 0.2); kept regions are
    moved to the front in order and the batch is zero-padded to its longest image (at least 1 row)."""
    n, regions, dim = images.shape
    keep = rng.random((n, regions)) > 1.0 - keep_prob
    lengths = keep.sum(axis=1)
    out = images.new_zeros((n, max(1, int(lengths.max(initial=0))), dim))
    for i in range(n):
        idx = torch.from_numpy(np.flatnonzero(keep[i]))
        out[i, : len(idx)] = images[i, idx]
    return out, torch.from_numpy(lengths.astype(np.int64))


class PairwiseAdapter(Adapter):
    """Adapter base for the region + BERT cross-attention methods (ESL, X-Dim)."""

    scoring: ClassVar[Literal["embedding", "pairwise"]] = "pairwise"
    image_input: ClassVar[Literal["regions", "pixels"]] = "regions"
    score_chunks: ClassVar[dict[str, tuple[int, int]]] = SCORE_CHUNKS
    score_budget: int | None = None  # overrides score_chunks[device][0]
    score_captions: int | None = None  # overrides score_chunks[device][1]

    def __init__(self, model: nn.Module, variant: str, dataset: str, options: dict[str, Any]) -> None:
        self.model = model
        self.variant = variant
        self.dataset = dataset
        self.options = options
        self.recipe: dict[str, Any] = dict(DEFAULT_RECIPE)

    # ---- inference --------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> PaddedTokens:
        """[CLS] WordPieces [SEP], padded with 0, no truncation (the official BertTokenizer pipeline)."""
        return bert_tokenize(captions)

    def encode_images(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Regions (B, R, img_dim) -> the image side of the pair interaction (B, R, F)."""
        with self._inference():
            regions = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images,
                                      dtype=torch.float32, device=self.device)
            if regions.ndim != 3:
                raise ValueError(f"expected region features (B, R, D), got shape {tuple(regions.shape)}")
            return self.model.image_side(regions)

    def encode_texts(self, texts: PaddedTokens) -> PaddedFeatures:
        """Token ids -> per-word features (B, L, F), zero beyond each caption's length."""
        with self._inference():
            texts = texts.to(self.device)
            width = int(texts.lengths.max()) if len(texts) else 0
            feats = self.model.text_side(texts.ids[:, :width])
            keep = torch.arange(width, device=feats.device)[None, :] < texts.lengths[:, None]
            return PaddedFeatures(feats.masked_fill(~keep[..., None], 0.0), texts.lengths)

    def score_elements_per_word(self, images: torch.Tensor) -> int:
        """Size of the largest scoring intermediate per (image, caption, word): regions by default."""
        return int(images.shape[1])

    def score(self, image_block: torch.Tensor, text_block: PaddedFeatures) -> torch.Tensor:
        """(images, captions) scores of every pair of the blocks, batched over chunks of up to
        `score_captions` captions and as many images as keep the largest intermediate (images x
        captions x words x `score_elements_per_word`) within `score_budget` elements (defaults by device)."""
        images = image_block.to(self.device)
        text = text_block.to(self.device)
        n_img, n_cap = images.shape[0], len(text)
        default = self.score_chunks.get(images.device.type, self.score_chunks["cuda"])
        budget = self.score_budget or default[0]
        max_captions = self.score_captions or default[1]
        per_caption = self.score_elements_per_word(images) * max(1, text.feats.shape[1])
        cap_chunk = max(1, min(n_cap, max_captions, budget // per_caption))
        img_chunk = max(1, min(n_img, budget // (cap_chunk * per_caption)))
        out = torch.empty(n_img, n_cap, dtype=images.dtype, device=images.device)
        with self._inference():
            for c in range(0, n_cap, cap_chunk):
                sub = text[c:c + cap_chunk]
                for a in range(0, n_img, img_chunk):
                    out[a:a + img_chunk, c:c + cap_chunk] = self.model.pair_scores(
                        images[a:a + img_chunk], sub.feats, sub.lengths)
        return out

    # ---- training -----------------------------------------------------------------------------
    def configure_training(self, recipe: Mapping[str, Any]) -> TrainingSetup:
        """AdamW (weight decay 1e-4) with the official four groups: text without BERT (lr), BERT
        (lr x bert_lr_factor), image encoder (lr), sim_vec (lr); all x lr_decay from each decay epoch."""
        self.recipe = {**DEFAULT_RECIPE, **dict(recipe)}
        r = self.recipe
        lr = float(r["lr"])
        txt = self.model.txt_enc
        bert_ids = {id(p) for p in txt.bert.parameters()}
        groups = [
            {"params": [p for p in txt.parameters() if id(p) not in bert_ids], "lr": lr},
            {"params": list(txt.bert.parameters()), "lr": lr * float(r["bert_lr_factor"])},
            {"params": list(self.model.img_enc.parameters()), "lr": lr},
            {"params": list(self.model.sim_vec.parameters()), "lr": lr},
        ]
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=float(r["weight_decay"]))
        base_lrs = [g["lr"] for g in groups]
        decay_epochs = [int(e) for e in r["lr_decay_epochs"]]
        decay = float(r["lr_decay"])

        def lr_at_epoch(epoch: int) -> list[float]:
            steps = sum(epoch >= e for e in decay_epochs)
            return [base * decay ** steps for base in base_lrs]

        clip = r.get("grad_clip")
        return TrainingSetup(optimizer=optimizer, grad_clip=float(clip) if clip else None, lr_at_epoch=lr_at_epoch)

    def _augmented_ids(self, caption: str, rng: np.random.Generator) -> list[int]:
        tok = bert_tokenizer()
        pieces = augment_word_pieces(bert_word_pieces(caption), rng, mask_id=tok.token_to_id("[MASK]"),
                                     vocab_size=tok.get_vocab_size(), prob=float(self.recipe["word_aug_prob"]))
        return [tok.token_to_id("[CLS]"), *pieces, tok.token_to_id("[SEP]")]

    def make_train_batch(self, images: np.ndarray | torch.Tensor, captions: Sequence[str],
                         rng: np.random.Generator, caption_ids: np.ndarray | None = None) -> PairwiseTrainBatch:
        """Images (B, R, D) matched to B captions: region dropping (keep `region_keep`) and word masking
        (`word_aug_prob`: 50% [MASK], 10% random ids, 40% deleted), all randomness from `rng`."""
        regions = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images,
                                  dtype=torch.float32)
        if regions.ndim != 3 or regions.shape[0] != len(captions):
            raise ValueError(f"expected images (B, R, D) for {len(captions)} captions, got {tuple(regions.shape)}")
        dropped, lengths = drop_regions(regions, float(self.recipe["region_keep"]), rng)
        tokens = pad_ids([self._augmented_ids(c, rng) for c in captions], pad=0)
        return PairwiseTrainBatch(dropped, lengths, tokens)

    def train_step(self, batch: PairwiseTrainBatch, epoch: int) -> dict[str, torch.Tensor]:
        """Hinge triplet loss (margin, sums over the batch) on the B x B pair scores: every negative
        before recipe['warmup_epochs'], the hardest negative per row/column afterwards."""
        batch = batch.to(self.device)
        scores = self.model.train_scores(batch.images, batch.tokens.ids, batch.tokens.lengths)
        hardest = hardest_negative_at(epoch, int(self.recipe["warmup_epochs"]))
        cost_im, cost_s = triplet_costs(scores, margin=float(self.recipe["margin"]), hardest_negative=hardest)
        return {"loss": cost_im + cost_s, "loss_im": cost_im.detach(), "loss_s": cost_s.detach()}


# ---- official containers ------------------------------------------------------------------------

HEAD_NAMES = {"esl-h": "ESL-H", "esl-a": "ESL-A", "xdim": "X-Dim"}


def head_kind(sim_state: Mapping[str, Any]) -> str | None:
    """'esl-h', 'esl-a' or 'xdim' from the (prefix-stripped) sim_vec keys; None if none matches."""
    keys = set(sim_state)
    if "plus_encoder.encoders_1.text_levels.kernel_txt_1.weight" in keys:
        return "esl-h"
    if "plus_encoder.encoders_1.text_levels.masks_1.weight" in keys:
        return "esl-a"
    if {"weights.weight", "sim_map.weight", "temp_learnable.weight"} <= keys:
        return "xdim"
    return None


def dataset_of_name(data_name: Any) -> str | None:
    """'coco' / 'f30k' from an official data_name ('coco_precomp', 'f30k_precomp' ...), None if neither."""
    name = str(data_name).lower()
    if "coco" in name:
        return "coco"
    if "f30k" in name or "flickr" in name:
        return "f30k"
    return None


def read_three_part(path: Path, method: str) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """The three prefix-stripped state dicts [img_enc, txt_enc, sim_vec] and the opt dict of an official
    ESL / X-Dim container; errors name the file and what it holds instead."""
    container = load_container(path)
    require_keys(path, container, ["model", "opt"], method)
    states = container["model"]
    if not isinstance(states, (list, tuple)) or not all(isinstance(s, Mapping) for s in states):
        raise CheckpointError(f"{path}: 'model' is a {type(states).__name__}, expected a list of 3 state dicts "
                              f"[img_enc, txt_enc, sim_vec]: not an official {method} checkpoint")
    if len(states) != 3:
        hint = (" ([image encoder, text encoder], as ESA / VSE-style embedding checkpoints hold)"
                if len(states) == 2 else "")
        raise CheckpointError(f"{path}: 'model' holds {len(states)} state dicts{hint}; an official {method} "
                              "checkpoint holds 3 [img_enc, txt_enc, sim_vec]: this is a checkpoint of another method")
    return [strip_prefix(s) for s in states], opt_dict(container["opt"])


def check_head(path: Path, sim_state: Mapping[str, Any], method: str, allowed: Sequence[str]) -> str:
    """The head kind of the file; an error if it is not one of `allowed`."""
    kind = head_kind(sim_state)
    if kind in allowed:
        return kind
    found = (f"an {HEAD_NAMES[kind]} checkpoint" if kind else
             f"an unknown similarity head (keys {sorted(sim_state)[:4]}...)")
    raise CheckpointError(f"{path}: sim_vec (model[2]) is {found}, not {method}")


def checkpoint_dataset(path: Path, opt: Mapping[str, Any], asked: str | None, method: str) -> str:
    """The dataset the checkpoint was trained on (opt.itrbench_dataset or opt.data_name), checked
    against the asked one."""
    found = opt.get("itrbench_dataset") or dataset_of_name(opt.get("data_name"))
    if found is None:
        if asked is not None:
            raise CheckpointError(f"{path}: opt.data_name={opt.get('data_name')!r} names no known dataset, so it "
                                  f"cannot be checked against the asked dataset {asked!r}")
        return str(opt.get("data_name"))
    if asked is not None and asked != found:
        raise CheckpointError(f"{path}: this {method} checkpoint was trained on {found} "
                              f"(opt.data_name={opt.get('data_name')!r}), but dataset {asked!r} was asked")
    return found


def check_basic(path: Path, opt: Mapping[str, Any]) -> None:
    enc_type = opt.get("precomp_enc_type", "basic")
    if enc_type != "basic":
        raise CheckpointError(f"{path}: opt.precomp_enc_type={enc_type!r}; only 'basic' (precomputed BUTD "
                              "regions) models are supported")


def official_opt_fields(adapter: PairwiseAdapter, epoch: int, data_name: str) -> dict[str, Any]:
    """The arguments.py fields shared by ESL and X-Dim (+ vocab_size), with our recipe values."""
    o, r = adapter.options, adapter.recipe
    warmup = int(r.get("warmup_epochs", 1))
    decay = list(r.get("lr_decay_epochs", [15]))
    run = f"runs/{data_name}_{adapter.method}_{adapter.variant}"
    return dict(
        data_path=f"../../data/{data_name.replace('_precomp', '')}", data_name=data_name, vocab_path="./vocab/",
        margin=float(r.get("margin", 0.2)), num_epochs=int(r.get("epochs", 30)),
        batch_size=int(r.get("batch_size", 128)), word_dim=300, embed_size=int(o["embed_size"]),
        grad_clip=float(r.get("grad_clip", 2.0)), learning_rate=float(r.get("lr", 5e-4)),
        lr_update=int(decay[0]) if decay else int(r.get("epochs", 30)), optim="adam", workers=10, log_step=200,
        val_step=500, logger_name=f"{run}/log", model_name=f"{run}/checkpoint", resume="",
        max_violation=epoch > warmup, img_dim=int(o["img_dim"]), no_imgnorm=bool(o["no_imgnorm"]),
        no_txtnorm=bool(o["no_txtnorm"]), precomp_enc_type="basic", backbone_path="", backbone_source="detector",
        vse_mean_warmup_epochs=warmup, reset_start_epoch=False, backbone_warmup_epochs=5,
        embedding_warmup_epochs=2, backbone_lr_factor=0.01, input_scale_factor=1.0,
        vocab_size=int(adapter.model.txt_enc.bert.config.vocab_size),
        itrbench_dataset=adapter.dataset, itrbench_bert=o["bert"],
    )


def write_three_part(adapter: PairwiseAdapter, opt: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The container the official train.py saves: three state dicts, keys prefixed `module.`."""
    def state(module: nn.Module) -> OrderedDict:
        return OrderedDict(add_prefix({k: v.detach().cpu().clone() for k, v in module.state_dict().items()}))

    model = adapter.model
    container: dict[str, Any] = {
        "epoch": int(extra.get("epoch", 0)),
        "model": [state(model.img_enc), state(model.txt_enc), state(model.sim_vec)],
        "best_rsum": 0.0,
        "opt": opt,
        "Eiters": 0,
    }
    container.update(extra)
    return container
