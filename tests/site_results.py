"""A small real results folder and registry for the site, export and merge tests (numbers from the project's
recall protocol on seeded random matrices; a registry label that tries to inject a script)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.core.results import ResultStore, save_npy
from harness.eval.protocols import compute_protocol
from harness.spec.registry import parse_registry

EVIL = "<script>alert('x')</script>"

REGISTRY = {
    "datasets": {"toy": {"description": "A toy set <b>bold</b>.", "split": "test", "protocols": ["recall"]}},
    "methods": {
        "alpha": {"title": "Alpha <i>method</i>", "venue": "Nowhere 2024", "code": "https://example.org/alpha",
                  "adapter": "methods.alpha:Alpha", "notes": [f"a note {EVIL}"],
                  "variants": {"a": {"options": {}}, "b": {"options": {}}}},
        "beta": {"title": "Beta", "adapter": "methods.beta:Beta", "variants": {"x": {"options": {}}}},
    },
    "reported": [
        {"method": "alpha", "variant": "a", "dataset": "toy", "protocol": "recall", "source": "paper",
         "table": "Table 1", "label": f"Alpha-A {EVIL}", "values": {"i2t.r1": 50.0, "rsum": 300.0}},
        {"method": "alpha", "variant": "b", "dataset": "toy", "protocol": "recall", "source": "paper",
         "table": "Table 1", "label": "Alpha-B", "values": {"rsum": 333.3}},
    ],
}

ENV = {"device": "cpu", "git": {"revision": "abc123def4567890", "dirty": False}, "python": "3.11.0",
       "packages": {"torch": "2.14.1"}}


def registry():
    return parse_registry(REGISTRY, source="site test registry")


def sims(seed: int, n: int = 30, signal: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, 8))
    cap = np.repeat(img, 5, axis=0) * signal + rng.normal(size=(5 * n, 8))
    return (img @ cap.T).astype(np.float32)


def add_eval(store: ResultStore, run: str, cfg: dict, matrix: np.ndarray, env: dict | None = None,
             efficiency: dict | None = None, protocols: dict | None = None) -> str:
    name = f"toy/{run}/eval"
    config = {"stage": "evaluate", "dataset": "toy", "split": "test", "name": name, "key": name, **cfg}
    store.start(name, config, env or ENV)
    save_npy(store.job_dir(name) / "sims.npy", matrix)
    store.finish(name, {"stage": "evaluate", "shape": list(matrix.shape),
                        "protocols": protocols or {"recall": compute_protocol("recall", matrix, bootstrap=50)},
                        "efficiency": efficiency or {"scoring_seconds": 0.1 + matrix.shape[0] / 100}})
    return name


def build_results(root: Path) -> ResultStore:
    """alpha/a official (reported rsum far off), alpha/b retrained over 3 seeds, beta/x official."""
    store = ResultStore(root)
    add_eval(store, "alpha-a-official", {"method": "alpha", "variant": "a", "source": "official"}, sims(0, signal=2.0),
             env={**ENV, "hardware": {"cpu": "Test CPU <x>", "isa": "avx2", "threads": 4}})
    for seed in (0, 1, 2):
        add_eval(store, f"alpha-b-seed{seed}", {"method": "alpha", "variant": "b", "source": f"seed{seed}",
                                               "seed": seed}, sims(10 + seed, signal=0.6))
    add_eval(store, "beta-x-official", {"method": "beta", "variant": "x", "source": "official"}, sims(5, signal=1.2))
    return store
