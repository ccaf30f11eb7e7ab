"""VSLAdapter: VSL (ICME 2023) on SGRAF for the harness, variants 'sgr' and 'saf'.

VSL scores pairs by cross attention, so the harness cannot use a matrix product: `score` runs the
SGRAF similarity head on whole (images x captions) blocks. Encoded blocks carry the self-attended
global vector in slot 0 (it depends only on its image or caption, so it is computed once):
- images: tensor (N, 1 + 36, embed): [global, region_1 .. region_36];
- captions: PaddedFeatures with feats (N, 1 + L, embed) = [global, word_1 .. word_L] and
  lengths = 1 + number of tokens (with <start> and <end>).
The variant 'sgraf' (SGRAF+VSL) is the mean of an SGR and an SAF matrix; the harness averages, and
`load_sgraf_pair` / `mean_matrix` here build the pair and the mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from harness.api import PaddedFeatures, PaddedTokens, TrainData, TrainingSetup
from methods.common.paper import OfficialFormat, PaperAdapter, as_regions
from methods.common.text_bert import pad_ids
from methods.common.vocab import PAD, Vocabulary, encode_caption, load_scan_vocab, vocab_tokenize
from methods.vsl.losses import (
    RANK_TEMPERATURE,
    VSL_WEIGHT,
    TfidfCorpus,
    triplet_loss,
    visual_semantic_loss,
)
from methods.vsl.model import SGRAF, length_mask
from methods.vsl.official import read_official, write_official

MODULES = {"sgr": "SGR", "saf": "SAF"}
DEFAULT_OPTIONS: dict[str, Any] = dict(
    img_dim=2048, word_dim=300, embed_size=1024, sim_dim=256, num_layers=1, bi_gru=True, sgr_step=3,
    no_imgnorm=False, no_txtnorm=False, num_regions=36,
)
DEFAULT_RECIPE: dict[str, Any] = dict(
    batch_size=128, lr=3e-4, lr_update=10, lr_decay=0.1, margin=0.2, max_violation=True, grad_clip=2.0,
    vsl=True, vsl_weight=VSL_WEIGHT, rank_temperature=RANK_TEMPERATURE, warmup_epochs=0,
)


@dataclass
class VSLTrainBatch:
    """One training batch, sorted by caption length (longest first) as the official collate does."""

    images: torch.Tensor  # (B, R, D) float32
    tokens: PaddedTokens  # B captions, row i paired with image row i
    semantic: torch.Tensor  # (B, B) float32 TF-IDF similarity of the rows' images

    def to(self, device: torch.device | str) -> VSLTrainBatch:
        return VSLTrainBatch(self.images.to(device), self.tokens.to(device), self.semantic.to(device))


class VSLAdapter(PaperAdapter):
    method: ClassVar[str] = "vsl"
    scoring: ClassVar[Literal["embedding", "pairwise"]] = "pairwise"
    image_input: ClassVar[Literal["regions", "pixels"]] = "regions"
    official_format: ClassVar[OfficialFormat] = OfficialFormat(read_official, write_official)
    default_recipe: ClassVar[Mapping[str, Any]] = DEFAULT_RECIPE

    def __init__(self, model: SGRAF, variant: str, dataset: str, options: dict[str, Any],
                 vocab: Vocabulary) -> None:
        super().__init__(model, variant, dataset, options)
        self.vocab = vocab
        self.corpus: TfidfCorpus | None = None
        self.checkpoint_info: dict[str, Any] = {}

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def build(cls, variant: str, dataset: str, options: Mapping[str, Any] | None = None) -> VSLAdapter:
        """A fresh SGRAF network with module SGR ('sgr') or SAF ('saf'). Options: img_dim, word_dim,
        embed_size, sim_dim, num_layers, bi_gru, sgr_step, no_imgnorm, no_txtnorm, num_regions (36 in the
        official code; the demo's synthetic images have fewer), vocab ('coco'/'f30k'; default: the
        dataset's, coco for other datasets)."""
        if variant not in MODULES:
            raise ValueError(f"VSL variant {variant!r} is not a single model; valid: sgr, saf "
                             "(sgraf is the mean of an sgr and an saf similarity matrix)")
        given = dict(options or {})  # the harness passes {**options, **recipe}: recipe keys are not ours
        opts = {k: given.get(k, v) for k, v in DEFAULT_OPTIONS.items()}
        opts["vocab"] = given.get("vocab") or (dataset if dataset in ("coco", "f30k") else "coco")
        vocab = load_scan_vocab(opts["vocab"])
        model = SGRAF(len(vocab), module=MODULES[variant], img_dim=int(opts["img_dim"]),
                      word_dim=int(opts["word_dim"]), embed_size=int(opts["embed_size"]),
                      sim_dim=int(opts["sim_dim"]), num_layers=int(opts["num_layers"]), bi_gru=bool(opts["bi_gru"]),
                      sgr_step=int(opts["sgr_step"]), no_imgnorm=bool(opts["no_imgnorm"]),
                      no_txtnorm=bool(opts["no_txtnorm"]), num_regions=int(opts["num_regions"]))
        return cls(model, variant, dataset, opts, vocab)

    # ---- inference --------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str]) -> PaddedTokens:
        """The official loader's ids: <start>, nltk.word_tokenize(caption.lower()) words, <end>."""
        return vocab_tokenize(self.vocab, captions)

    def encode_images(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, R, img_dim) regions -> (N, 1 + R, embed): [self-attended global, encoded regions]."""
        with self._inference():
            regions = as_regions(images, self.device)
            encoded = self.model.img_enc(regions)
            glob = self.model.sim_enc.image_global(encoded)
            return torch.cat([glob[:, None, :], encoded], dim=1)

    def encode_texts(self, texts: PaddedTokens) -> PaddedFeatures:
        """Token ids -> PaddedFeatures [self-attended global, word features], lengths + 1."""
        with self._inference():
            texts = texts.to(self.device)
            words = self.model.txt_enc(texts.ids, texts.lengths)
            mask = length_mask(texts.lengths, words.shape[1])
            glob = self.model.sim_enc.caption_global(words, mask)
            feats = torch.cat([glob[:, None, :], words * mask[..., None]], dim=1)
            return PaddedFeatures(feats, texts.lengths.to(torch.long) + 1)

    def score(self, image_block: torch.Tensor, text_block: PaddedFeatures) -> torch.Tensor:
        """(images, captions) SGRAF scores in (0, 1) of two encoded blocks, all pairs at once."""
        with self._inference():
            feats = text_block.feats.to(image_block.device)
            lengths = text_block.lengths.to(image_block.device) - 1
            mask = length_mask(lengths, feats.shape[1] - 1)
            return self.model.sim_enc.pair_scores(image_block[:, 1:], image_block[:, 0], feats[:, 1:],
                                                  feats[:, 0], mask)

    # ---- data and training -------------------------------------------------------------------
    def train_data(self, data_root: str | Path, dataset: str | None = None) -> TrainData:
        """As the base class, and fits the split's TF-IDF (VSL's semantic matrix), as the official
        dataset does when it is constructed; batches then look captions up by `caption_ids`."""
        data = super().train_data(data_root, dataset)
        self.attach_training_corpus(data.captions, images=data.images)
        return data

    def attach_training_corpus(self, captions: Sequence[str], captions_per_image: int = 5,
                               images: np.ndarray | None = None) -> None:
        """Fit the TF-IDF of the whole training split. Needed before make_train_batch when the VSL term is
        on. `images` (the split's region features) resolve captions whose text several images share."""
        self.corpus = TfidfCorpus(captions, captions_per_image, images=images)

    def configure_training(self, recipe: Mapping[str, Any]) -> TrainingSetup:
        """Adam over all parameters (one group, no weight decay); lr = lr * lr_decay ** (epoch // lr_update);
        gradient norm clipped to grad_clip."""
        r = self.use_recipe(recipe)
        lr = float(r["lr"])
        params = (list(self.model.txt_enc.parameters()) + list(self.model.img_enc.parameters())
                  + list(self.model.sim_enc.parameters()))
        optimizer = torch.optim.Adam(params, lr=lr)
        step, decay = int(r["lr_update"]), float(r["lr_decay"])

        def lr_at_epoch(epoch: int) -> list[float]:
            return [lr * decay ** (epoch // step)]

        clip = r.get("grad_clip")
        return TrainingSetup(optimizer=optimizer, grad_clip=float(clip) if clip else None, lr_at_epoch=lr_at_epoch)

    def make_train_batch(self, images: np.ndarray | torch.Tensor, captions: Sequence[str],
                         rng: np.random.Generator, caption_ids: Sequence[int] | None = None) -> VSLTrainBatch:
        """Images (B, R, D) matched to B captions -> ids and the images' TF-IDF similarity, sorted by
        caption length. `caption_ids` (indices into the attached corpus) identify each caption's image;
        without them captions are looked up by text. No augmentation (the official code has none)."""
        regions = as_regions(images)
        if regions.ndim != 3 or regions.shape[0] != len(captions):
            raise ValueError(f"expected images (B, R, D) for {len(captions)} captions, got {tuple(regions.shape)}")
        seqs = [encode_caption(self.vocab, c) for c in captions]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # stable, longest first
        if self.recipe.get("vsl", True):
            if self.corpus is None:
                raise RuntimeError("VSL training needs the TF-IDF of the training captions: call "
                                   "adapter.attach_training_corpus(train_captions) first")
            ids = (np.asarray(caption_ids, dtype=np.int64) if caption_ids is not None
                   else self.corpus.caption_ids(captions, regions.numpy()))
            semantic = self.corpus.image_similarity(ids[order] // self.corpus.captions_per_image)
        else:
            semantic = torch.zeros(len(seqs), len(seqs))
        return VSLTrainBatch(regions[order], pad_ids([seqs[i] for i in order], pad=PAD), semantic)

    def train_step(self, batch: VSLTrainBatch, epoch: int) -> dict[str, torch.Tensor]:
        """Triplet (summed; hardest negative with max_violation) + VSL on the batch score matrix.
        The official recipe has no warm-up (warmup_epochs 0): with warmup_epochs > 0 every negative
        counts before that epoch (used by the demo, where hardest negatives from step 0 collapse)."""
        batch = batch.to(self.device)
        r = self.recipe
        scores = self.model(batch.images, batch.tokens.ids, batch.tokens.lengths)
        hardest = bool(r["max_violation"]) and epoch >= int(r.get("warmup_epochs", 0))
        triplet = triplet_loss(scores, float(r["margin"]), hardest)
        out = {"triplet": triplet.detach()}
        loss = triplet
        if r.get("vsl", True):
            vsl = visual_semantic_loss(scores, batch.semantic, float(r["vsl_weight"]), float(r["rank_temperature"]))
            loss = triplet + vsl
            out["vsl"] = vsl.detach()
        out["loss"] = loss
        return out


def load_sgraf_pair(sgr_path: str | Path, saf_path: str | Path, *,
                    dataset: str | None = None) -> tuple[VSLAdapter, VSLAdapter]:
    """The two members of SGRAF+VSL: an SGR checkpoint and an SAF checkpoint of the same dataset."""
    sgr = VSLAdapter.load_official(sgr_path, variant="sgr", dataset=dataset)
    saf = VSLAdapter.load_official(saf_path, variant="saf", dataset=dataset or sgr.dataset)
    return sgr, saf


def mean_matrix(sgr_sims: np.ndarray, saf_sims: np.ndarray) -> np.ndarray:
    """SGRAF+VSL's matrix: (SGR + SAF) / 2 in float64, as the authors averaged their saved matrices."""
    if sgr_sims.shape != saf_sims.shape:
        raise ValueError(f"SGR matrix {sgr_sims.shape} and SAF matrix {saf_sims.shape} differ in shape")
    return (np.asarray(sgr_sims, dtype=np.float64) + np.asarray(saf_sims, dtype=np.float64)) / 2
