"""Every method runs on a user's dataset: a registry file declaring dataset `mine` (precomp, its shape) and
`run_all.py --registry mine.yaml --dataset mine` from a temp folder. Methods without a recipe for it use their
default recipe, sized from the dataset's declared shape, and the plan says so; check-data compares the folder
against the declared split sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from plan_helpers import plan_of

from harness.run.plan import dataset_recipe
from harness.spec.checks import check_dataset
from harness.spec.registry import RegistryError, load_registry

ROOT = Path(__file__).resolve().parents[1]
MEANPOOL = ROOT / "examples" / "meanpool"
SIZES = {"train": 30, "dev": 6, "test": 6}
DIM = 16

MINE = f"""\
datasets:
  mine:
    description: a user's tiny dataset
    split: test
    validation_split: dev
    protocols: [recall]
    images: {{train: {SIZES['train']}, dev: {SIZES['dev']}, test: {SIZES['test']}}}
    captions_per_image: 5
    feature_dim: {DIM}
    layout: precomp
"""


WORDS = "dog cat man woman bus car train plate pizza horse tree grass street table bird boat".split()


def write_split(folder: Path, split: str, n_images: int, dim: int = DIM, seed: int = 0) -> None:
    """A precomp split: `n_images` of 4 regions of `dim` features, 5 captions each that name the image's two
    topics (the regions carry the same two topics), so a model can learn something in one epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    topics = rng.integers(0, len(WORDS), (n_images, 2))
    images = 0.1 * rng.standard_normal((n_images, 4, dim)).astype(np.float32)
    for i, (a, b) in enumerate(topics):
        images[i, :, a % dim] += 1.0
        images[i, :, (b + 3) % dim] += 1.0
    np.save(folder / f"{split}_ims.npy", images)
    captions = [f"a {WORDS[a]} and a {WORDS[b]} {place} the {WORDS[(a + k) % len(WORDS)]}"
                for a, b in topics for k, place in enumerate(("near", "with", "by", "on", "beside"))]
    (folder / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A user's folder: mine.yaml and data/mine/precomp/{{train,dev,test}}_{{ims.npy,caps.txt}}."""
    (tmp_path / "mine.yaml").write_text(MINE)
    for k, (split, n) in enumerate(SIZES.items()):
        write_split(tmp_path / "data" / "mine" / "precomp", split, n, dim=DIM, seed=k)
    return tmp_path


def run_all(folder: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(MEANPOOL), str(ROOT)]), "COLUMNS": "200",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args, "--dataset", "mine", "--registry",
                           "mine.yaml", "--data-root", "data", "--results", "results", "--reports", "reports"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_the_plan_uses_each_methods_default_recipe_on_a_user_dataset_and_says_so(user_folder, monkeypatch):
    monkeypatch.syspath_prepend(str(MEANPOOL))
    monkeypatch.delitem(sys.modules, "meanpool", raising=False)
    registry = load_registry(user_folder / "mine.yaml", MEANPOOL / "registry.yaml")
    plan = plan_of(registry, ["esa", "meanpool"], "mine", variants=["bigru", "base"], stage="train",
                      data_root=user_folder / "data", code="c")
    assert "esa/bigru: no recipe for 'mine'; using the default recipe" in "\n".join(plan.notes)
    assert f"meanpool/base: no recipe for 'mine'; using the default recipe (img_dim={DIM} from the dataset's " \
           "declared shape)" in plan.notes
    mean = registry.method("meanpool")
    assert dataset_recipe(mean, "base", registry.dataset("mine")) == {**mean.recipes["default"], "img_dim": DIM}
    assert dataset_recipe(mean, "base", registry.dataset("demo"))["img_dim"] == 512  # its own recipe: untouched
    assert "default" not in registry.datasets


def test_check_data_compares_the_folder_with_the_declared_split_sizes(user_folder):
    registry = load_registry(user_folder / "mine.yaml")
    data = user_folder / "data"
    assert check_dataset("mine", data, ["train", "dev", "test"], registry=registry) == []
    write_split(data / "mine" / "precomp", "dev", 4, dim=DIM)
    write_split(data / "mine" / "precomp", "test", 6, dim=DIM + 1)
    problems = check_dataset("mine", data, ["train", "dev", "test"], registry=registry)
    folder = data / "mine" / "precomp"
    assert problems == [f"{folder / 'dev_ims.npy'}: 4 images, the mine dev split has 6",
                        f"{folder / 'test_ims.npy'}: region feature dim {DIM + 1}, expected {DIM} "
                        "(BUTD features are 36 x 2048)"]  # every problem named
    with pytest.raises(RegistryError, match="unknown layout 'hdf5_regions'; valid: precomp, cusa_json"):
        (user_folder / "bad.yaml").write_text(MINE.replace("layout: precomp", "layout: hdf5_regions"))
        load_registry(user_folder / "bad.yaml")


def test_meanpool_and_esa_train_and_evaluate_on_a_user_dataset(user_folder, one_thread):
    out = run_all(user_folder, "--methods", "meanpool", "--registry", str(MEANPOOL / "registry.yaml"),
                  "--set", "meanpool.epochs=1")
    assert "meanpool/base: no recipe for 'mine'; using the default recipe (img_dim=16" in out
    out += run_all(user_folder, "--methods", "esa", "--variants", "bigru", "--set", "esa.epochs=1",
                   "--set", "esa.embed_size=32", "--set", "esa.word_dim=16", "--set", "esa.batch_size=16")
    assert "esa/bigru: no recipe for 'mine'; using the default recipe (img_dim=16" in out
    results = user_folder / "results" / "mine"
    for method in ("meanpool-base", "esa-bigru"):
        [run] = [p for p in results.iterdir() if p.name.startswith(f"{method}-seed0")]
        config = yaml.safe_load((run / "train" / "config.yaml").read_text())
        assert config["recipe"]["img_dim"] == DIM and config["recipe"]["epochs"] == 1
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert metrics["shape"] == [SIZES["test"], 5 * SIZES["test"]]
        assert 0 <= metrics["protocols"]["recall"]["rsum"] <= 600
    assert "| esa/bigru |" in (user_folder / "reports" / "mine.md").read_text()
