"""Training health and training curves on a tiny real training run: a model that collapses (every score
equal) from epoch 1 is flagged at epoch 1, in the summary, the history and the reports; TensorBoard events
are written and readable."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from harness.api import Adapter, TrainingSetup
from harness.core.results import ResultStore
from harness.data.demo import chance_rsum
from harness.report import write_reports
from harness.run.curves import open_events
from harness.run.health import epoch_health, run_health, validation_chance
from harness.run.training import train
from methods.common.triplet import collapse_value, hardest_negative_at, triplet_costs
from tests.test_report import REGISTRY, section, table_row

DIM, N_TRAIN, N_VAL, BATCH = 8, 8, 10, 4
RECIPE = {"epochs": 3, "batch_size": BATCH, "seed": 0, "margin": 0.2, "warmup_epochs": 1}


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))


class CollapsingAdapter(Adapter):
    """Captions 'image <i>' embed to image i's own vector (a perfect model) until training reaches epoch
    `collapse_at`; from then on (its steps and the validation after it) every image and caption embeds to
    one vector (every score equal)."""

    method, scoring = "collapsing", "embedding"

    def __init__(self, vectors: np.ndarray, collapse_at: int | None) -> None:
        self.variant, self.dataset, self.options = "a", "toy", {}
        self.model = _Model()
        self.vectors = torch.nn.functional.normalize(torch.tensor(vectors, dtype=torch.float32), dim=-1)
        self.collapse_at, self.epoch, self.recipe = collapse_at, 0, dict(RECIPE)

    @classmethod
    def build(cls, variant: str, dataset: str, options: Mapping[str, Any] | None = None) -> CollapsingAdapter:
        raise NotImplementedError

    @classmethod
    def load_official(cls, path, *, variant=None, dataset=None) -> CollapsingAdapter:
        raise NotImplementedError

    def official_checkpoint(self, **extra: Any) -> dict[str, Any]:
        return {"scale": self.model.scale.detach(), **extra}

    def _embed(self, ids: Sequence[int]) -> torch.Tensor:
        if self.collapse_at is not None and self.epoch >= self.collapse_at:  # validation follows the epoch
            return torch.ones(len(ids), DIM) / DIM ** 0.5 * self.model.scale
        return self.vectors[list(ids)] * self.model.scale

    def tokenize(self, captions: Sequence[str]) -> Any:
        return [int(c.split()[1]) for c in captions]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self._embed([int(i) for i in images[:, 0, 0]])  # region 0, dim 0 holds the image id

    def encode_texts(self, texts: Any) -> torch.Tensor:
        return self._embed(texts)

    def score(self, image_block: torch.Tensor, text_block: torch.Tensor) -> torch.Tensor:
        return image_block @ text_block.T

    def configure_training(self, recipe: Mapping[str, Any]) -> TrainingSetup:
        opt = torch.optim.SGD(self.model.parameters(), lr=0.0)
        return TrainingSetup(optimizer=opt, grad_clip=None, lr_at_epoch=lambda epoch: [0.0])

    def make_train_batch(self, images, captions, rng, caption_ids=None) -> Any:
        return [int(i) for i in np.asarray(images)[:, 0, 0]], self.tokenize(captions)

    def train_step(self, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        self.epoch = epoch
        images, captions = batch
        scores = self._embed(images) @ self._embed(captions).T
        hardest = hardest_negative_at(epoch, int(self.recipe["warmup_epochs"]))
        cost_im, cost_s = triplet_costs(scores, margin=float(self.recipe["margin"]), hardest_negative=hardest)
        return {"loss": cost_im + cost_s}

    def collapse_loss(self, epoch: int, batch_size: int) -> float:
        return collapse_value(batch_size, margin=float(self.recipe["margin"]),
                              hardest_negative=hardest_negative_at(epoch, int(self.recipe["warmup_epochs"])))


def _data(n: int, offset: int = 0) -> tuple[np.ndarray, list[str]]:
    images = np.zeros((n, 1, DIM), dtype=np.float32)
    images[:, 0, 0] = np.arange(offset, offset + n)
    return images, [f"image {i}" for i in range(offset, offset + n)]


def _run(tmp_path, collapse_at, events=None):
    vectors = np.random.default_rng(0).standard_normal((N_TRAIN + N_VAL, DIM))
    adapter = CollapsingAdapter(vectors, collapse_at)
    train_images, train_caps = _data(N_TRAIN)
    val_images, val_caps = _data(N_VAL, N_TRAIN)
    records: list[dict] = []
    summary = train(adapter, train_images, train_caps, RECIPE, tmp_path / "work", val_images=val_images,
                    val_captions=val_caps, captions_per_image=1, val_image_of_caption=np.arange(N_VAL),
                    log=lambda msg: None,
                    on_epoch=records.append, events=events)
    return summary, records


def test_a_run_that_collapses_at_epoch_1_is_flagged_at_epoch_1(tmp_path):
    summary, records = _run(tmp_path, collapse_at=1)
    assert [r["health"] is None for r in records] == [True, False, False]
    assert summary.health["collapsed_at_epoch"] == 1
    reason = summary.health["reason"]
    assert f"at the collapse value {2 * 0.2 * BATCH:.4g}" in reason  # hardest negatives: 2 x margin x batch
    chance = chance_rsum(N_VAL, 1)
    assert f"at chance level ({chance:.1f})" in reason
    assert records[0]["val_rsum"] == pytest.approx(600.0) and records[0]["val_chance"] == pytest.approx(chance)


def test_a_healthy_run_is_not_flagged(tmp_path):
    summary, records = _run(tmp_path, collapse_at=None)
    assert summary.health == {"collapsed_at_epoch": None, "reason": None}
    assert all(r["health"] is None and r["val_rsum"] == pytest.approx(600.0) for r in records)


def test_epoch_health_ignores_a_short_last_batch_and_needs_every_step_at_the_value():
    # 2 x 0.2 x 4 = 1.6 per full batch; the last batch of 2 has loss 0.8
    assert "collapse value 1.6" in epoch_health(1, [1.6, 1.6, 1.6, 0.8], [4, 4, 4, 2], 1.6, None, None)
    assert epoch_health(1, [1.6, 0.3, 0.2, 0.8], [4, 4, 4, 2], 1.6, None, None) is None
    assert epoch_health(2, [1.6, 1.6, 1.2, 2.0, 1.6], [4] * 5, 1.6, None, None) is None  # median only: healthy VSE++
    assert epoch_health(0, [], [], None, 34.4, 31.6) is not None  # 34.4 <= 1.25 x 31.6
    assert epoch_health(0, [], [], None, 98.4, 31.6) is None
    assert validation_chance(100, 500) == pytest.approx(chance_rsum(100, 5))
    assert run_health([{"epoch": 0, "health": None}, {"epoch": 2, "health": "x"}, {"epoch": 3, "health": "y"}]) == \
        {"collapsed_at_epoch": 2, "reason": "x"}


def test_collapse_value_matches_the_triplet_loss_of_equal_scores():
    scores = torch.full((6, 6), 0.3)
    for hardest in (True, False):
        im, s = triplet_costs(scores, margin=0.2, hardest_negative=hardest)
        assert float(im + s) == pytest.approx(collapse_value(6, margin=0.2, hardest_negative=hardest))


def test_tensorboard_events_hold_loss_lrs_and_validation(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = open_events(tmp_path, print)
    _run(tmp_path, collapse_at=None, events=events)
    events.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr/group0", "val/rsum", "train/epoch_loss"} <= set(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]  # 2 steps x 3 epochs
    assert [e.step for e in acc.Scalars("val/rsum")] == [0, 1, 2]
    assert acc.Scalars("val/rsum")[0].value == pytest.approx(600.0)


def test_without_tensorboard_training_notes_it_once(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    said: list[str] = []
    assert open_events(tmp_path, said.append) is None
    assert len(said) == 1 and "tensorboard is not installed" in said[0]
    assert not (tmp_path / "tb").exists()


def test_reports_flag_collapsed_runs_and_plot_their_curves(tmp_path):
    from harness.spec.registry import parse_registry

    store = ResultStore(tmp_path / "results")
    env = {"device": "cpu"}
    train_name = "toy/alpha-a-seed0/train"
    store.start(train_name, {"stage": "train", "dataset": "toy", "method": "alpha", "variant": "a", "seed": 0,
                             "name": train_name}, env)
    (store.job_dir(train_name) / "loss_curve.tsv").write_text("epoch\tstep\tloss\n0\t1\t300\n0\t2\t250\n1\t1\t12.8\n")
    store.finish(train_name, {"stage": "train", "best_rsum": 98.4, "best_epoch": 0,
                              "history": [{"epoch": 0, "loss": 275, "val_rsum": 98.4, "val_chance": 31.6},
                                          {"epoch": 1, "loss": 12.8, "val_rsum": 32.8, "val_chance": 31.6}],
                              "health": {"collapsed_at_epoch": 1, "reason": "loss 12.8 at the collapse value 12.8"}})
    eval_name = "toy/alpha-a-seed0/eval"
    store.start(eval_name, {"stage": "evaluate", "dataset": "toy", "split": "test", "method": "alpha",
                            "variant": "a", "seed": 0, "source": "retrained", "train_job": train_name,
                            "name": eval_name}, env)
    store.finish(eval_name, {"stage": "evaluate", "shape": [20, 100], "protocols": {
        "recall": {"protocol": "recall", "i2t": {"r1": 1.0}, "t2i": {"r1": 1.0}, "rsum": 20.0}}, "efficiency": {}})
    write_reports(tmp_path / "results", tmp_path / "reports", registry=parse_registry(REGISTRY, source="test"))
    toy = (tmp_path / "reports" / "toy.md").read_text()
    row = table_row(section(toy, "## Training health"), f"`{train_name}`")
    assert row[2:] == ["1", "loss 12.8 at the collapse value 12.8"]
    paper = (tmp_path / "reports" / "alpha.md").read_text()
    curves = section(paper, "## Training curves")
    png = re.search(r"\(plots/([^)]+-training\.png)\)", curves).group(1)
    assert (tmp_path / "reports" / "plots" / png).read_bytes().startswith(b"\x89PNG")
    assert "Collapsed: alpha-a-seed0 at epoch 1." in curves
