"""No command writes over a file it reads, over the data, or into a job folder it does not own; each evaluation
without --save-sims gets its own folder. Every refusal is one line naming the flag and the path, before any work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from stub_method import write_split
from test_rehearsals import stub_lab

from harness.cli.app import main
from harness.core.outputs import OutputError, guard_output


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def lab(tmp_path, monkeypatch):
    _, reg, ck = stub_lab(tmp_path, monkeypatch)
    write_split(tmp_path / "data" / "mine" / "precomp", "test", 4)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "m.npy", rng.standard_normal((4, 20)).astype(np.float32))
    np.save(tmp_path / "m.image_of_caption.npy", np.arange(20) // 5)
    job = tmp_path / "results" / "mine" / "stub-a-official" / "eval"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(yaml.safe_dump({"stage": "evaluate", "method": "stub"}))
    (job / "metrics.json").write_text(json.dumps({"stage": "evaluate", "protocols": {}}))
    return tmp_path, reg, ck


def _one_line_refusal(capsys, code: int, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def _metrics(tmp: Path, *extra: str) -> int:
    return main(["metrics", "--sims", str(tmp / "m.npy"), "--protocol", "recall", "--bootstrap", "0", *extra])


def test_metrics_never_writes_its_inputs_a_job_folder_or_an_existing_file(lab, capsys):
    tmp, _, _ = lab
    before = _digests(tmp)
    for target, words in [(tmp / "m.image_of_caption.npy", ("--json", "reads")),  # found beside the matrix
                          (tmp / "m.npy", ("--json", "reads")),
                          (tmp / "results" / "mine" / "stub-a-official" / "eval" / "metrics.json", ("job folder",)),
                          (tmp / "results" / "mine" / "stub-a-official" / "eval" / "new.json", ("job folder",)),
                          (tmp / "mine.yaml", ("exists", "--overwrite"))]:
        _one_line_refusal(capsys, _metrics(tmp, "--json", str(target)), str(target), *words)
    assert _digests(tmp) == before

    out = tmp / "out.json"
    assert _metrics(tmp, "--json", str(out)) == 0
    first = json.loads(out.read_text())
    _one_line_refusal(capsys, _metrics(tmp, "--json", str(out)), "exists")
    assert _metrics(tmp, "--json", str(out), "--overwrite") == 0
    assert json.loads(out.read_text())["rsum"] == first["rsum"]


def _evaluate(tmp: Path, reg: Path, ck: Path, *extra: str) -> int:
    return main(["evaluate", "--registry", str(reg), "--method", "stub", "--variant", "a", "--checkpoint", str(ck),
                 "--data-root", str(tmp / "data"), "--dataset", "mine", *extra])


def test_evaluate_refuses_the_data_its_checkpoint_and_job_files(lab, capsys):
    tmp, reg, ck = lab
    before = _digests(tmp)
    split = tmp / "data" / "mine" / "precomp"
    cases = [(["--save-sims", str(split / "test_ims.npy")], ("--save-sims", "data folder")),
             (["--json", str(split / "test_caps.txt")], ("--json", "data folder")),
             (["--json", str(split / "notes.json")], ("data folder",)),  # a new file in the data is refused too
             (["--json", str(ck)], ("reads",)),
             (["--save-sims", str(reg)], ("reads",)),
             (["--save-sims", str(tmp / "results" / "mine" / "stub-a-official" / "eval" / "sims.npy")],
              ("job folder",)),
             (["--save-sims", str(tmp / "s.npy"), "--json", str(tmp / "s.npy")], ("own names",))]
    for extra, words in cases:
        _one_line_refusal(capsys, _evaluate(tmp, reg, ck, *extra), *words)
    assert _digests(tmp) == before
    assert not (tmp / "s.npy").exists()


def test_each_default_evaluation_gets_its_own_folder(lab, capsys):
    tmp, reg, ck = lab
    assert _evaluate(tmp, reg, ck) == 0
    assert _evaluate(tmp, reg, ck) == 0
    folders = sorted((tmp / "results" / "_evaluate").iterdir())
    assert len(folders) == 2 and all((f / "sims.npy").is_file() for f in folders)
    assert np.array_equal(np.load(folders[0] / "sims.npy"), np.load(folders[1] / "sims.npy"))


def test_guard_unit_cases(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        guard_output(tmp_path / "d", "--x")
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        guard_output(tmp_path / "f" / "out.json", "--x")
    assert guard_output(None, "--x") is None
    assert guard_output(tmp_path / "new" / "deeper" / "o.json", "--x") == tmp_path / "new" / "deeper" / "o.json"
    # a symlink to an input is the input
    (tmp_path / "link").symlink_to(tmp_path / "f")
    with pytest.raises(OutputError, match="reads"):
        guard_output(tmp_path / "link", "--x", reads=[tmp_path / "f"], overwrite=True)
