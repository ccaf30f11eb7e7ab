"""A result of another split than the dataset's test split is its own row, marked with its split: a train- or
dev-split matrix never sits in the test-split table as if it were a test number."""

from __future__ import annotations

import numpy as np

from harness.cli.app import main


def test_a_dev_split_import_is_its_own_marked_row(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((20, 100)).astype(np.float32)
    sims[np.arange(100) // 5, np.arange(100)] += 3.0  # learnable: every caption's image scores high
    np.save(tmp_path / "test.npy", sims)
    np.save(tmp_path / "dev.npy", rng.standard_normal((20, 100)).astype(np.float32))
    base = ["import", "--method", "mine", "--dataset", "f30k", "--results", str(tmp_path / "results")]
    assert main([*base, "--sims", str(tmp_path / "test.npy")]) == 0
    assert main([*base, "--sims", str(tmp_path / "dev.npy"), "--split", "dev", "--label", "dev"]) == 0
    assert main(["report", "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports"),
                 "--dataset", "f30k"]) == 0
    text = (tmp_path / "reports" / "f30k.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| mine/")]
    dev = [ln for ln in rows if "split=dev" in ln]
    test = [ln for ln in rows if "split=" not in ln]
    assert dev and test, rows
    assert not any("split=dev" in ln for ln in test)
