"""An example method from outside the project: the mean of an image's region features through a linear layer,
against the mean of its caption's hashed word embeddings, trained with a symmetric InfoNCE loss by the
harness's own training loop. `registry.yaml` beside this file registers it; it uses the harness through
`harness.api` only, as the project's methods do."""

from __future__ import annotations

import re
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Adapter, TrainingSetup, load_container, load_strict, require_keys


class MeanPoolAdapter(Adapter):
    method, scoring, image_input = "meanpool", "embedding", "regions"

    def __init__(self, variant: str, dataset: str, options: dict) -> None:
        self.variant, self.dataset, self.options = variant, dataset, dict(options)
        self.buckets, embed = int(self.options.get("buckets", 8192)), int(self.options.get("embed_size", 256))
        self.model = nn.ModuleDict({"image": nn.Linear(int(self.options.get("img_dim", 2048)), embed),
                                    "words": nn.EmbeddingBag(self.buckets, embed, mode="mean", padding_idx=0)})

    @classmethod
    def build(cls, variant, dataset, options=None):
        return cls(variant, dataset, options or {})

    @classmethod
    def load_official(cls, path, *, variant=None, dataset=None):
        """Our own checkpoint format (what `official_checkpoint` writes), read safely and strictly."""
        container = load_container(path)
        require_keys(path, container, ("model", "options"), "meanpool")
        adapter = cls(variant or "base", dataset or "unknown", container["options"])
        load_strict(adapter.model, container["model"], path=path, part="model")
        return adapter

    def official_checkpoint(self, **extra):
        return {"model": self.model.state_dict(), "options": self.options, **extra}

    def tokenize(self, captions):
        """Each word hashed into buckets 1..buckets-1 (0 pads): no vocabulary file to ship."""
        rows = [[zlib.crc32(w.encode()) % (self.buckets - 1) + 1 for w in re.findall(r"[a-z]+", c.lower())] or [0]
                for c in captions]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
        return ids

    def encode_images(self, images):
        return F.normalize(self.model["image"](images.to(self.device).float().mean(dim=1)), dim=-1)

    def encode_texts(self, texts):
        return F.normalize(self.model["words"](texts.to(self.device)), dim=-1)

    def score(self, image_block, text_block):
        return image_block @ text_block.t()

    def configure_training(self, recipe):
        lr = float(recipe.get("lr", 1e-3))
        return TrainingSetup(torch.optim.AdamW(self.model.parameters(), lr=lr), None, lambda epoch: [lr])

    def make_train_batch(self, images, captions, rng, caption_ids=None):
        return {"images": torch.as_tensor(images, dtype=torch.float32), "tokens": self.tokenize(captions)}

    def train_step(self, batch, epoch):
        image = self.gather(self.encode_images(batch["images"]))
        text = self.gather(self.encode_texts(batch["tokens"]))
        logits = image @ text.t() / float(self.options.get("temperature", 0.05))
        target = torch.arange(len(logits), device=logits.device)
        return {"loss": (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2}
