"""From a fresh folder: `fetch data` and `fetch` from a local mirror, then `run --stage evaluate` scores ESA's
official checkpoint with nothing done by hand (a lab mirror in the official layout; no internet)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from test_fetch_fixtures import esa_bytes, fake_drive, fetch, no_internet, out, server, zip_bytes  # noqa: F401

import harness.cli.app

WIRED = "fetch" in harness.cli.app.SUBCOMMANDS


def _mirror(srv) -> None:
    """The lab mirror: data.zip with a Flickr30K test split, and ESA's two BiGRU checkpoint files."""
    rng = np.random.default_rng(0)
    ims = io.BytesIO()
    np.save(ims, rng.standard_normal((1000, 2, 2048), dtype=np.float32))
    caps = "\n".join(f"a {w} on the grass" for i in range(1000) for w in ("dog", "man", "cat", "boy", "car"))
    srv.files["/lab/data/data.zip"] = zip_bytes({"data/f30k_precomp/test_ims.npy": ims.getvalue(),
                                                 "data/f30k_precomp/test_caps.txt": (caps + "\n").encode()})
    for k, name in enumerate(("model_best.pth", "model_best_2.pth")):
        srv.files[f"/lab/esa/bigru/f30k/{name}"] = esa_bytes(seed=k, img_dim=2048)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a shared 2-core machine
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("entry", [
    pytest.param("cli", marks=pytest.mark.skipif(not WIRED, reason="fetch is not wired into harness.cli.app yet")),
    pytest.param("parser", marks=pytest.mark.skipif(WIRED, reason="covered through harness.cli.app")),
])
def test_fetch_then_run_evaluate_scores_the_official_esa_checkpoint(tmp_path, monkeypatch, server, fake_drive,  # noqa: F811
                                                                    no_internet, out, entry):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # a fresh clone's defaults: data/, checkpoints/, results/, reports/
    _mirror(server)
    mirror = server.url + "/lab"
    run_fetch = (lambda *a: harness.cli.app.main(["fetch", *a])) if entry == "cli" else fetch

    assert run_fetch("data", "--dataset", "f30k", "--splits", "test", "--mirror", mirror) == 0
    assert run_fetch("--methods", "esa", "--variants", "bigru", "--dataset", "f30k", "--mirror", mirror) == 0
    assert fake_drive.calls == []  # the mirror served everything; the official Drive folder was not needed
    assert harness.cli.app.main(["run", "--methods", "esa", "--variants", "bigru", "--dataset", "f30k",
                             "--stage", "evaluate"]) == 0
    metrics = json.loads((tmp_path / "results" / "f30k" / "esa-bigru-official" / "eval" / "metrics.json").read_text())
    assert "f30k1k" in json.dumps(metrics)
    # a second fetch finds everything present and verified, and downloads nothing
    server.log.clear()
    assert run_fetch("--methods", "esa", "--variants", "bigru", "--dataset", "f30k", "--offline") == 0
    assert server.log == []
