"""The CUSA adapter: CLIP dual encoder with cross-modal heads for retrieval, uni-modal heads for
STS and image retrieval, and CUSA training (ITC + CSA + USA).

Options (registry variant options, build `options`):
- `objective`: cusa (default) | only_contrastive | csa | usa.
- `clip_config`: an open_clip geometry dict replacing the variant's (e.g. `config.TINY_CLIP`).
- `clip_weights`: a local CLIP state dict (.pt/.bin/.safetensors, OpenAI key names) to start from;
  without it CLIP is randomly initialised (never downloaded).
- `truncate_text` (default True): run the text tower only up to the longest end-of-text token of
  each batch; identical features, several times faster than the official fixed 77 tokens.
- the flat loss keys of `config.STANDARD_LOSS_DEFAULTS` (temperatures, clamp ranges, weights).
Recipe keys used by `configure_training`: clip_weights (required for an untrained model unless from_scratch:
true), lr, min_lr, weight_decay, epochs, text_teacher (a local
sentence-transformers folder, or `minilm`), text_teacher_cache (encode each caption once; small sets),
teacher_image_features (a converted .npz; a relative path is found beside the training split's
new_train.json, see `train_data`), and the loss keys.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harness.api import (
    CheckpointError,
    CusaSplit,
    PaddedTokens,
    TrainData,
    TrainingSetup,
    clip_preprocess,
    load_container,
    load_strict,
    pre_caption,
    require_keys,
    strip_prefix,
)
from methods.common.clip import ClipAdapter, load_clip_weights, tokenize_texts
from methods.cusa.config import (
    OBJECTIVES,
    STANDARD_LOSS_DEFAULTS,
    VARIANT_CLIP_NAMES,
    clip_config,
    standard_loss_config,
)
from methods.cusa.model import CUSAModel, l2_normalise
from methods.cusa.official import (
    clip_config_from_state,
    dataset_of_config,
    loss_config_from_official,
    official_config,
    variant_of_clip_name,
)
from methods.cusa.teacher import TeacherFeatures
from methods.cusa.teachers import TextTeacher, minilm_teacher_path


@dataclass
class CUSABatch:
    """One training batch: pixels, tokens of the cleaned captions, image indices, teacher features."""

    pixels: torch.Tensor  # (B, 3, H, W)
    tokens: PaddedTokens
    captions: list[str]  # after pre_caption (what the text teacher reads)
    image_index: torch.Tensor  # (B,) int64; equal values = same image
    teacher_image: torch.Tensor | None  # (B, D) or None for only_contrastive


class CUSAAdapter(ClipAdapter):
    method: ClassVar[str] = "cusa"

    def __init__(self, model: CUSAModel, *, variant: str, dataset: str, options: Mapping[str, Any],
                 official: Mapping[str, Any] | None = None):
        self.model = model
        self.variant = variant
        self.dataset = dataset
        self.options = dict(options)
        self.truncate_text = bool(self.options.get("truncate_text", True))
        self.preprocess = clip_preprocess(model.image_size)
        self.official = dict(official) if official is not None else None  # the loaded checkpoint's config
        self._fresh = official is None  # untrained: configure_training may still set geometry, objective, taus
        self.text_teacher: TextTeacher | None = None
        self.image_teacher: TeacherFeatures | None = None
        self.recipe: dict[str, Any] = {}
        self.train_split: CusaSplit | None = None  # set by train_data: image ids and folder of the training split

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, variant: str, dataset: str, options: Mapping[str, Any] | None = None) -> CUSAAdapter:
        opts = dict(options or {})
        objective = opts.get("objective", "cusa")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown CUSA objective '{objective}'; valid: {', '.join(OBJECTIVES)}")
        if opts.get("reported_only"):
            raise ValueError(f"CUSA variant '{variant}' holds reported numbers only (backbones without released "
                             "code); it cannot be built")
        if variant not in VARIANT_CLIP_NAMES and "clip_config" not in opts:
            raise ValueError(f"unknown CUSA variant '{variant}'; valid: {', '.join(VARIANT_CLIP_NAMES)} "
                             "(the other backbones of the paper have no released code)")
        model = CUSAModel(clip_config(variant, opts.get("clip_config")), standard_loss_config(objective, opts))
        if opts.get("clip_weights"):
            load_clip_weights(model, opts["clip_weights"])
        return cls(model, variant=variant, dataset=dataset, options=opts)

    @classmethod
    def load_official(cls, path: str | Path, *, variant: str | None = None,
                      dataset: str | None = None) -> CUSAAdapter:
        container = load_container(path)
        require_keys(path, container, ("model", "config"), "CUSA")
        config = container["config"]
        if not isinstance(config, Mapping) or "clip_model" not in config or "loss_config" not in config:
            raise CheckpointError(f"{path}: 'config' is not a CUSA yaml config (needs clip_model and loss_config)")
        state = container["model"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{path}: 'model' is not a state dict")
        state = strip_prefix(state)
        clip_name = str(config["clip_model"])
        file_variant = variant_of_clip_name(clip_name)
        geometry = clip_config_from_state(state, path)
        if variant is not None:
            if variant not in VARIANT_CLIP_NAMES:
                raise CheckpointError(f"{path}: unknown CUSA variant '{variant}'; "
                                      f"valid: {', '.join(VARIANT_CLIP_NAMES)}")
            if file_variant != variant:
                raise CheckpointError(f"{path}: a '{clip_name}' checkpoint, not variant {variant} "
                                      f"({VARIANT_CLIP_NAMES[variant]})")
            expected = clip_config(variant)
            declared = config.get("itrbench_clip_config")  # a reduced geometry (e.g. the demo's) written by us
            if geometry != expected and declared != geometry:
                raise CheckpointError(f"{path}: weights have CLIP geometry {geometry}, not the {clip_name} geometry "
                                      f"{expected}")
        file_dataset = dataset_of_config(config)
        if dataset is not None and file_dataset is not None and dataset != file_dataset:
            raise CheckpointError(f"{path}: trained on {file_dataset} (config save_path "
                                  f"'{config.get('save_path', '')}'), not {dataset}")
        loss_cfg = loss_config_from_official(config["loss_config"], path)
        model = CUSAModel(geometry, loss_cfg)
        load_strict(model, state, path=path, part="model")
        options = {"objective": loss_cfg.objective}
        if file_variant is None or geometry != clip_config(file_variant):
            options["clip_config"] = geometry
        adapter = cls(model, variant=variant or file_variant or clip_name, dataset=dataset or file_dataset or "unknown",
                      options=options, official=config)
        adapter.checkpoint_info = {k: container.get(k) for k in ("epoch", "best", "best_epoch")}
        return adapter

    def official_checkpoint(self, **extra: Any) -> dict[str, Any]:
        """`{'model', 'config', 'epoch', 'best', 'best_epoch'}` as `retrieval.py` saves it."""
        if self.official is not None:
            config = dict(self.official)
        else:
            clip_name = VARIANT_CLIP_NAMES.get(self.variant, self.variant)
            config = official_config(clip_name, self.model.loss_cfg, self.recipe)
            if self.variant not in VARIANT_CLIP_NAMES or self.model.clip_cfg != clip_config(self.variant):
                # not the released geometry: say so, so that load_official(variant=...) accepts it knowingly
                config["itrbench_clip_config"] = self.model.clip_cfg
        out: dict[str, Any] = {"model": self.model.state_dict(), "config": config, "epoch": 0, "best": 0,
                               "best_epoch": 0}
        if extra.get("best_rsum") is not None and float(extra["best_rsum"]) >= 0:
            out["best"] = float(extra["best_rsum"]) / 6.0  # the official 'best' is r_mean (mean of six recalls)
        out.update(extra)
        return out

    # ---- data ------------------------------------------------------------------------------------
    def train_data(self, data_root: str | Path, dataset: str | None = None) -> TrainData:
        """The `train` split: lazy preprocessed pixels (one per image), raw captions, caption -> image.

        Remembers the split so that `make_train_batch(caption_ids=...)` finds each caption's image id
        (soft same-image ITC targets, teacher feature lookup) and a relative recipe
        `teacher_image_features` resolves against the split's folder.
        """
        split = self.eval_split(data_root, "train", dataset)
        self.train_split = split
        self._load_image_teacher()
        # the transform is looked up at each read: configure_training may still change the image size
        images = split.pixel_images(lambda image: self.preprocess(image))
        return TrainData(images, list(split.captions), np.asarray(split.image_of_caption))

    # ---- inference ----------------------------------------------------------------------------
    @property
    def objective(self) -> str:
        return self.model.loss_cfg.objective

    def tokenize(self, captions: Sequence[str]) -> PaddedTokens:
        """CUSA's caption cleaning, then CLIP BPE (77 tokens; longer captions are cut at 77 with EOT)."""
        cleaned = []
        for n, c in enumerate(captions):
            try:
                cleaned.append(pre_caption(c))
            except ValueError as exc:
                raise ValueError(f"caption {n}: {exc}") from exc
        return tokenize_texts(cleaned, self.model.context_length)

    def _ids(self, texts: PaddedTokens | torch.Tensor) -> torch.Tensor:
        ids = texts.ids if isinstance(texts, PaddedTokens) else texts
        return ids.to(self.device)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised cross-modal image embeddings of preprocessed pixels (B, 3, H, W)."""
        return l2_normalise(self.model.encode_image(images.to(self.device, torch.float32), cross_modal=True))

    def encode_texts(self, texts: PaddedTokens | torch.Tensor) -> torch.Tensor:
        """L2-normalised cross-modal caption embeddings."""
        return l2_normalise(self.model.encode_text(self._ids(texts), cross_modal=True, truncate=self.truncate_text))

    def text_embeddings(self, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Uni-modal text embeddings (L2-normalised) as CUSA's STS evaluation makes them: no caption
        cleaning, CLIP BPE cut at 77 tokens, the uni text head (raw CLIP features without one)."""
        with self._inference():
            out = []
            for i in range(0, len(captions), batch_size):
                tok = tokenize_texts(captions[i:i + batch_size], self.model.context_length)
                out.append(self.model.encode_text(self._ids(tok), cross_modal=False, truncate=self.truncate_text))
            return l2_normalise(torch.cat(out)).float()

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Uni-modal image embeddings (L2-normalised) of preprocessed pixels, for image retrieval."""
        with self._inference():
            pixels = images.to(self.device, torch.float32)
            return l2_normalise(self.model.encode_image(pixels, cross_modal=False)).float()

    # ---- training -------------------------------------------------------------------------------
    def configure_training(self, recipe: Mapping[str, Any]) -> TrainingSetup:
        """AdamW (no decay on 1-D parameters and biases; the 0-dim temperatures decay), cosine lr per epoch."""
        r = dict(recipe)
        self.recipe = r
        if self._fresh:
            if not (r.get("clip_weights") or self.options.get("clip_weights") or r.get("from_scratch")):
                raise ValueError("CUSA fine-tunes pretrained CLIP: set recipe key clip_weights to a local OpenAI CLIP "
                                 "state dict (e.g. `run --set cusa.clip_weights=/path/ViT-B-32-quickgelu-openai.bin`), "
                                 "or from_scratch: true to train a randomly initialised CLIP (the demo does)")
            self._apply_recipe_to_fresh_model(r)
        self._fresh = False
        cfg = self.model.loss_cfg
        if cfg.csa or cfg.usa:
            teacher = r.get("text_teacher")
            if not teacher:
                raise ValueError(f"objective '{cfg.objective}' needs recipe key text_teacher "
                                 "(a local sentence-transformers folder, or 'minilm')")
            self.text_teacher = TextTeacher(minilm_teacher_path() if teacher == "minilm" else teacher, self.device,
                                            cache=bool(r.get("text_teacher_cache", False)))
            self.image_teacher = None
            self._load_image_teacher()
        lr, min_lr = float(r.get("lr", 1e-5)), float(r.get("min_lr", 1e-6))
        epochs = int(r.get("epochs", 30))
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() == 1 or name.endswith(".bias") else decay).append(p)
        optimizer = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                                       {"params": decay, "weight_decay": float(r.get("weight_decay", 1e-4))}], lr=lr)

        def lr_at_epoch(epoch: int) -> list[float]:
            if epoch >= epochs:
                return [min_lr, min_lr]
            value = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs))
            return [value, value]

        return TrainingSetup(optimizer=optimizer, grad_clip=None, lr_at_epoch=lr_at_epoch)

    def _teacher_image_path(self) -> Path | None:
        """Where the recipe's `teacher_image_features` is: absolute, else under the recipe's `data_root`,
        else beside the training split's json (None while a relative path cannot be resolved yet)."""
        spec = self.recipe.get("teacher_image_features")
        if not spec:
            return None
        path = Path(spec)
        if path.is_absolute():
            return path
        if self.recipe.get("data_root"):
            return Path(self.recipe["data_root"]) / path
        if self.train_split is not None:
            return self.train_split.path.parent / path
        return None

    def _load_image_teacher(self) -> None:
        """Load the teacher image features once both the recipe and (for a relative path) the split are known."""
        cfg = self.model.loss_cfg
        if self.image_teacher is not None or not (cfg.csa or cfg.usa):
            return
        path = self._teacher_image_path()
        if path is not None:
            self.image_teacher = TeacherFeatures.from_file(path)

    def _apply_recipe_to_fresh_model(self, recipe: Mapping[str, Any]) -> None:
        """A model not yet trained or loaded takes the recipe's geometry (`clip_config`), `objective`,
        temperatures and loss weights; recipe keys override the build options."""
        opts = {**self.options, **{k: v for k, v in recipe.items()
                                   if k in STANDARD_LOSS_DEFAULTS or k in ("clip_config", "objective")}}
        objective = opts.get("objective", "cusa")
        geometry = clip_config(self.variant, opts.get("clip_config"))
        loss_cfg = standard_loss_config(objective, opts)
        if geometry != self.model.clip_cfg or loss_cfg.objective != self.objective:
            device = self.device
            model = CUSAModel(geometry, loss_cfg)
            if opts.get("clip_weights"):
                load_clip_weights(model, opts["clip_weights"])
            self.model = model.to(device)
            self.preprocess = clip_preprocess(model.image_size)
        else:
            with torch.no_grad():
                for t in loss_cfg.temperatures:
                    param = getattr(self.model, t.name)
                    param.fill_(t.init)
                    param.requires_grad_(t.learnable)
            self.model.loss_cfg = loss_cfg
        self.options = opts

    def make_train_batch(self, images: Any, captions: Sequence[str], rng: np.random.Generator | None = None,
                         caption_ids: np.ndarray | Sequence[int] | None = None, *,
                         image_ids: Sequence[Hashable] | None = None,
                         teacher_image_features: np.ndarray | torch.Tensor | None = None) -> CUSABatch:
        """Collate a batch: PIL images (or preprocessed tensors), raw captions, and per-sample image ids.

        `image_ids` mark captions of the same image (soft ITC targets) and look up the Unicom features
        when the recipe gave `teacher_image_features`; `caption_ids` (indices into `train_data`'s
        captions, as the training loop passes them) give the image ids of the remembered training
        split. Without either, every sample is its own image. No augmentation (as officially).
        """
        n = len(captions)
        if caption_ids is not None and image_ids is None:
            if self.train_split is None:
                raise ValueError("make_train_batch got caption_ids but no training split is loaded: call "
                                 "train_data(data_root, dataset) first")
            owner = self.train_split.image_of_caption
            ids = np.asarray(caption_ids, dtype=np.int64)
            if len(ids) != n:
                raise ValueError(f"{len(ids)} caption ids for {n} captions")
            if len(ids) and (ids.min() < 0 or ids.max() >= len(owner)):
                raise ValueError(f"caption ids out of range for the {len(owner)} captions of {self.train_split.path}")
            image_ids = [self.train_split.image_ids[int(i)] for i in owner[ids]]
        pixels = self._pixels(images)
        if pixels.shape[0] != n:
            raise ValueError(f"{pixels.shape[0]} images but {n} captions in the batch")
        cleaned = [pre_caption(c) for c in captions]
        if image_ids is None:
            index = torch.arange(n)
        else:
            if len(image_ids) != n:
                raise ValueError(f"{len(image_ids)} image ids for {n} captions")
            codes: dict[Hashable, int] = {}
            index = torch.tensor([codes.setdefault(i, len(codes)) for i in image_ids], dtype=torch.long)
        teacher = None
        cfg = self.model.loss_cfg
        if cfg.csa or cfg.usa:
            if teacher_image_features is None:
                self._load_image_teacher()
                if self.image_teacher is None and self.recipe.get("teacher_image_features"):
                    raise ValueError(f"recipe teacher_image_features '{self.recipe['teacher_image_features']}' is "
                                     "relative: call train_data first (it resolves against the training split's "
                                     "folder) or give an absolute path")
                if self.image_teacher is None or image_ids is None:
                    raise ValueError(f"objective '{cfg.objective}' needs teacher image features: pass "
                                     "teacher_image_features, or image ids (caption_ids after train_data) with "
                                     "recipe teacher_image_features")
                teacher_image_features = self.image_teacher.lookup(image_ids)
            teacher = torch.as_tensor(np.asarray(teacher_image_features, dtype=np.float32))
            if teacher.shape[0] != n:
                raise ValueError(f"{teacher.shape[0]} teacher image features for {n} captions")
        return CUSABatch(pixels=pixels, tokens=tokenize_texts(cleaned, self.model.context_length),
                         captions=cleaned, image_index=index, teacher_image=teacher)

    def _pixels(self, images: Any) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images.float()
        if isinstance(images, np.ndarray) and images.dtype != np.uint8:
            return torch.as_tensor(images, dtype=torch.float32)
        from PIL import Image

        out = []
        for im in images:
            if isinstance(im, torch.Tensor):  # already preprocessed (e.g. items of a PixelImages view)
                out.append(im.float())
                continue
            if isinstance(im, np.ndarray):
                im = Image.fromarray(im)
            out.append(self.preprocess(im))
        return torch.stack(out)

    def train_step(self, batch: CUSABatch, epoch: int) -> dict[str, torch.Tensor]:
        device = self.device
        teacher_text = None
        cfg = self.model.loss_cfg
        if cfg.csa or cfg.usa:
            if self.text_teacher is None:
                raise ValueError("configure_training must run first: the text teacher is not loaded")
            teacher_text = self.text_teacher.encode(batch.captions).to(device)
        teacher_image = batch.teacher_image.to(device) if batch.teacher_image is not None else None
        losses = self.model(batch.pixels.to(device), batch.tokens.ids.to(device), batch.image_index.to(device),
                            teacher_image, teacher_text, truncate=self.truncate_text)
        return {k: (v if k == "loss" else v.detach()) for k, v in losses.items()}
