"""ESAAdapter: ESA (TCSVT 2023) for the harness, variants 'bigru' and 'bert'.

ESA is an embedding method: images and captions are encoded once each and scored by a matrix
product. The ensemble ESA* (mean of two models' matrices) is assembled by the harness.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from harness.api import PaddedTokens, TrainingSetup
from methods.common.augment import augment_word_ids, augment_word_pieces
from methods.common.optim import adamw_step_decay, bert_text_groups
from methods.common.paper import OfficialFormat, PaperAdapter, as_regions
from methods.common.text_bert import bert_tokenize, bert_tokenizer, bert_word_pieces, pad_ids
from methods.common.text_bigru import init_embedding_from_vectors, read_word_vectors
from methods.common.vocab import PAD, Vocabulary, encode_caption, load_scan_vocab, vocab_tokenize
from methods.esa.losses import SelfExpandingTripletLoss, hardest_negative_at
from methods.esa.model import ESABertTextEncoder, ESABiGRUTextEncoder, ESAImageEncoder, ESAModel
from methods.esa.official import read_official, write_official

DEFAULT_OPTIONS: dict[str, Any] = dict(
    embed_size=1024, img_dim=2048, word_dim=300, bert="bert-base-uncased", no_imgnorm=False, no_txtnorm=False,
)
DEFAULT_RECIPE: dict[str, Any] = dict(
    lr=5e-4, lr_decay_epochs=[15], lr_decay=0.1, margin=0.2, warmup_epochs=1, grad_clip=2.0, hardnum=2,
    region_keep=0.8, word_aug_prob=0.2,
)
WEIGHT_DECAY = {"bigru": 0.01, "bert": 1e-4}  # AdamW default (BiGRU) / the BERT code's decay_factor
TEXT_BATCH = 256


@dataclass
class ESATrainBatch:
    """One training batch: B images, K region keep-masks per image, B*K augmented captions.

    Caption rows are interleaved ([cap0 copy0, cap0 copy1, cap1 copy0, ...]), like the image views.
    """

    images: torch.Tensor  # (B, R, D) float32
    region_keep: torch.Tensor  # (K, B, R) bool
    tokens: PaddedTokens  # B*K rows

    def to(self, device: torch.device | str) -> ESATrainBatch:
        return ESATrainBatch(self.images.to(device), self.region_keep.to(device), self.tokens.to(device))


class ESAAdapter(PaperAdapter):
    method: ClassVar[str] = "esa"
    scoring: ClassVar[Literal["embedding", "pairwise"]] = "embedding"
    image_input: ClassVar[Literal["regions", "pixels"]] = "regions"
    official_format: ClassVar[OfficialFormat] = OfficialFormat(read_official, write_official)
    default_recipe: ClassVar[Mapping[str, Any]] = DEFAULT_RECIPE

    def __init__(self, model: ESAModel, variant: str, dataset: str, options: dict[str, Any],
                 vocab: Vocabulary | None) -> None:
        super().__init__(model, variant, dataset, options)
        self.vocab = vocab
        self._loss = SelfExpandingTripletLoss(margin=self.recipe["margin"], hardnum=self.recipe["hardnum"])

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def build(cls, variant: str, dataset: str, options: Mapping[str, Any] | None = None) -> ESAAdapter:
        """A fresh ESA model. Options: embed_size, img_dim, word_dim, text ('bigru'/'bert', must match
        the variant), bert ('bert-base-uncased', 'minilm' or a BertConfig dict), bert_pretrained,
        vocab ('coco'/'f30k'; default: the dataset's, coco for other datasets), glove (word vectors file)."""
        if variant not in ("bigru", "bert"):
            raise ValueError(f"ESA variant {variant!r} is not a single model; valid: bigru, bert "
                             "(esa_star is the mean of two models' similarity matrices)")
        opts = {**DEFAULT_OPTIONS, **dict(options or {})}
        if opts.setdefault("text", variant) != variant:
            raise ValueError(f"ESA variant {variant!r} conflicts with option text={opts['text']!r}")
        opts.setdefault("vocab", dataset if dataset in ("coco", "f30k") else "coco")
        opts.setdefault("bert_pretrained", opts["bert"] == "minilm")
        embed = int(opts["embed_size"])
        img_enc = ESAImageEncoder(int(opts["img_dim"]), embed, normalize=not opts["no_imgnorm"])
        vocab = None
        if variant == "bigru":
            vocab = load_scan_vocab(opts["vocab"], add_mask=True)
            txt_enc = ESABiGRUTextEncoder(len(vocab), int(opts["word_dim"]), embed,
                                          normalize=not opts["no_txtnorm"])
            if opts.get("glove"):
                vectors = read_word_vectors(opts["glove"], int(opts["word_dim"]))
                init_embedding_from_vectors(txt_enc.embed, vocab.word2idx, vectors)
        else:
            txt_enc = ESABertTextEncoder(embed, backbone=opts["bert"],
                                         pretrained=bool(opts["bert_pretrained"]),
                                         normalize=not opts["no_txtnorm"])
        return cls(ESAModel(img_enc, txt_enc), variant, dataset, opts, vocab)

    @property
    def vocab_size(self) -> int:
        if self.vocab is not None:
            return len(self.vocab)
        return int(self.model.txt_enc.bert.config.vocab_size)

    # ---- inference --------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> PaddedTokens:
        if self.variant == "bigru":
            return vocab_tokenize(self.vocab, captions)
        return bert_tokenize(captions)

    def encode_images(self, images: torch.Tensor | np.ndarray | Sequence[Any]) -> torch.Tensor:
        with self._inference():
            return self.model.img_enc(as_regions(images).to(self.device))

    def encode_texts(self, texts: PaddedTokens) -> torch.Tensor:
        with self._inference():
            texts = texts.to(self.device)
            return self.model.txt_enc(texts.ids, texts.lengths)

    def score(self, image_block: torch.Tensor, text_block: torch.Tensor) -> torch.Tensor:
        return image_block @ text_block.to(image_block.device).t()

    def text_embeddings(self, captions: Sequence[str]) -> torch.Tensor:
        """ESA's caption vectors (L2-normalised), a uni-modal text space."""
        blocks = [self.encode_texts(self.tokenize(captions[i:i + TEXT_BATCH]))
                  for i in range(0, len(captions), TEXT_BATCH)]
        return torch.cat(blocks) if blocks else torch.zeros(0, int(self.options["embed_size"]))

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_images(images)

    # ---- training -----------------------------------------------------------------------------
    def _setting(self, recipe: Mapping[str, Any], key: str, default: Any) -> Any:
        """A training setting: the recipe first, then the variant options, then the default."""
        if key in recipe:
            return recipe[key]
        return self.options.get(key, default)

    def configure_training(self, recipe: Mapping[str, Any]) -> TrainingSetup:
        """AdamW as in the official code. BiGRU: one group (text then image params), weight decay 0.01.
        BERT: groups [text without BERT, BERT (lr x bert_lr_factor), image], weight decay 1e-4.
        lr x lr_decay at the start of each epoch in lr_decay_epochs."""
        r = self.use_recipe(recipe)
        self._loss = SelfExpandingTripletLoss(margin=float(r["margin"]), hardnum=int(r["hardnum"]))
        lr = float(r["lr"])
        weight_decay = float(self._setting(recipe, "weight_decay", WEIGHT_DECAY[self.variant]))
        img, txt = self.model.img_enc, self.model.txt_enc
        if self.variant == "bigru":
            groups = [{"params": list(txt.parameters()) + list(img.parameters()), "lr": lr}]
        else:
            factor = float(self._setting(recipe, "bert_lr_factor", 0.1))
            groups = [*bert_text_groups(txt, lr, factor), {"params": list(img.parameters()), "lr": lr}]
        return adamw_step_decay(groups, r, weight_decay)

    def _augmented_ids(self, caption: str, rng: np.random.Generator) -> list[int]:
        prob = float(self.recipe["word_aug_prob"])
        if self.variant == "bigru":
            ids = encode_caption(self.vocab, caption)
            return augment_word_ids(ids, rng, mask_id=self.vocab("<mask>"), vocab_size=len(self.vocab),
                                    prob=prob)
        tok = bert_tokenizer()
        pieces = augment_word_pieces(bert_word_pieces(caption), rng, mask_id=tok.token_to_id("[MASK]"),
                                     vocab_size=tok.get_vocab_size(), prob=prob)
        return [tok.token_to_id("[CLS]"), *pieces, tok.token_to_id("[SEP]")]

    def make_train_batch(self, images: np.ndarray | torch.Tensor | Sequence[Any], captions: Sequence[str],
                         rng: np.random.Generator, caption_ids: np.ndarray | None = None) -> ESATrainBatch:
        """Images (B, R, D) matched to B captions -> hardnum region masks and hardnum augmented copies
        of each caption (all randomness from `rng`)."""
        k = int(self.recipe["hardnum"])
        regions = as_regions(images)
        if regions.ndim != 3 or regions.shape[0] != len(captions):
            raise ValueError(f"expected images (B, R, D) for {len(captions)} captions, "
                             f"got {tuple(regions.shape)}")
        draws = rng.random((k, regions.shape[0], regions.shape[1]))
        keep = torch.from_numpy(draws < float(self.recipe["region_keep"]))
        seqs = [self._augmented_ids(c, rng) for c in captions for _ in range(k)]
        return ESATrainBatch(regions, keep, pad_ids(seqs, pad=PAD))

    def shard_batch(self, batch: ESATrainBatch, start: int, stop: int, size: int) -> ESATrainBatch:
        """Samples [start, stop) for data-parallel training: region masks hold samples on their second
        axis, captions k consecutive rows per sample."""
        k = int(batch.region_keep.shape[0])
        return ESATrainBatch(batch.images[start:stop], batch.region_keep[:, start:stop],
                             batch.tokens[start * k:stop * k])

    def train_step(self, batch: ESATrainBatch, epoch: int) -> dict[str, torch.Tensor]:
        """Self-expanding loss (sum over the batch): VSE0 before recipe['warmup_epochs'], VSE++ after.

        Under data parallelism the loss sees the global batch: embeddings go through `gather`."""
        batch = batch.to(self.device)
        img = self.gather(self.model.img_enc.views(batch.images, batch.region_keep))
        cap = self.gather(self.model.txt_enc(batch.tokens.ids, batch.tokens.lengths))
        hardest = hardest_negative_at(epoch, int(self.recipe["warmup_epochs"]))
        cost_im, cost_s = self._loss(img, cap, hardest_negative=hardest)
        return {"loss": cost_im + cost_s, "loss_im": cost_im.detach(), "loss_s": cost_s.detach()}
