"""`run_all.py metrics`: reads .npy / .h5 and writes the JSON shape scripts and reports rely on."""

import json

import h5py
import numpy as np

from harness.cli.app import main
from harness.eval.metrics.loop_reference import loop_i2t_ranks, loop_summary, loop_t2i_ranks


def test_metrics_json_shape_and_values(tmp_path):
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((1000, 5000)).astype(np.float32)
    sims[np.arange(5000) // 5, np.arange(5000)] += 2.5
    np.save(tmp_path / "s.npy", sims)
    out = tmp_path / "m.json"
    assert main(["metrics", "--sims", str(tmp_path / "s.npy"), "--protocol", "f30k1k", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["protocol"] == "f30k1k"
    assert set(got["i2t"]) >= {"r1", "r5", "r10", "medr", "meanr"}
    assert set(got["ties"]) >= {"rsum_tie_optimistic", "i2t_affected_queries", "t2i_affected_queries"}
    i2t = loop_summary(loop_i2t_ranks(sims))
    t2i = loop_summary(loop_t2i_ranks(sims))
    assert [got["i2t"][k] for k in ("r1", "r5", "r10", "medr")] == list(i2t[:4])
    assert [got["t2i"][k] for k in ("r1", "r5", "r10", "medr")] == list(t2i[:4])
    assert abs(got["rsum"] - (sum(i2t[:3]) + sum(t2i[:3]))) < 1e-9


def test_h5_input_and_bad_inputs(tmp_path, capsys):
    sims = np.random.default_rng(1).standard_normal((1000, 5000)).astype(np.float32)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["sims"] = sims
    assert main(["metrics", "--sims", str(tmp_path / "s.h5"), "--protocol", "f30k1k"]) == 0
    assert main(["metrics", "--sims", str(tmp_path / "s.h5"), "--protocol", "coco5k"]) == 2
    assert "coco5k is not defined for this matrix: COCO 5K needs 5000 images" in capsys.readouterr().err
    sims[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", sims)
    assert main(["metrics", "--sims", str(tmp_path / "nan.npy"), "--protocol", "f30k1k"]) == 2
    assert "NaN" in capsys.readouterr().err
    assert main(["metrics", "--sims", str(tmp_path / "missing.npy"), "--protocol", "f30k1k"]) == 2


def test_metrics_and_help_never_import_torch(tmp_path):
    """`metrics` on numpy files is numpy work: a fresh process never imports torch, transformers or open_clip."""
    import subprocess
    import sys

    sims = tmp_path / "sims.npy"
    np.save(sims, np.eye(4, 20, dtype=np.float32))
    probe = ("import sys\nfrom harness.cli.app import main\ntry:\n    code = main(sys.argv[1:])\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "print(sorted(m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules), code)")
    for args in (["metrics", "--sims", str(sims), "--protocol", "recall", "--bootstrap", "0"], ["--help"]):
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        assert out.stdout.strip().splitlines()[-1] == "[] 0", (args, out.stdout[-500:], out.stderr[-500:])
