"""Code identities over parsed code: what each stage hashes, and which edits change a hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from harness.core.code_identity import STAGES, code_hash, parsed_code, stage_files, stage_hash
from harness.core.jobconfig import JobConfig
from harness.core.paths import PROJECT_DIR
from harness.core.results import ResultStore, save_npy
from harness.run.jobs import changed_parts
from harness.run.plan import IDENTITY_SCHEME, Job
from harness.run.protocol_refresh import RECOMPUTE, REEVALUATE, needs_model, refresh_action

SOURCE = '''"""A module."""
import math


def area(r):
    """The area."""
    return math.pi * r ** 2  # of a disc
'''


def test_comments_docstrings_and_formatting_keep_the_hash(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(SOURCE)
    before = code_hash(f)
    f.write_text('import math\n\n\n\ndef area( r ):\n    # squared\n    """Another docstring."""\n'
                 '    return (math.pi * r ** 2)\n')
    assert code_hash(f) == before
    f.write_text(SOURCE.replace("r ** 2", "r ** 3"))
    assert code_hash(f) != before
    f.write_text(SOURCE + "\nX = 1\n")  # a new line of code
    assert code_hash(f) != before


def test_only_and_without_select_top_level_definitions():
    src = "A = 1\n\ndef f():\n    return A\n\ndef g():\n    return 2\n"
    assert parsed_code(src, only=["f"]) == parsed_code("def f():\n    return A\n")
    assert parsed_code(src, without=["g"]) == parsed_code("A = 1\n\ndef f():\n    return A\n")
    changed = src.replace("return 2", "return 3")
    assert parsed_code(changed, without=["g"]) == parsed_code(src, without=["g"])
    assert parsed_code(changed, only=["g"]) != parsed_code(src, only=["g"])


def test_stages_hold_what_can_change_their_output():
    rel = {s: {p.relative_to(PROJECT_DIR).as_posix() for p in stage_files(STAGES[s])} for s in STAGES}
    train, matrix, protocols = rel["train"], rel["matrix"], rel["protocols"]
    assert {"harness/run/training.py", "harness/api/adapter.py", "harness/core/features.py",
            "harness/core/checkpoints.py", "harness/data/precomp.py", "harness/run/distributed.py"} <= train
    assert "harness/eval/metrics/recall.py" in train  # the validation rsum picks the best epoch's weights
    assert {"harness/eval/scoring.py", "harness/eval/precision.py", "harness/eval/evaluation.py",
            "harness/data/precomp.py"} <= matrix
    assert {"harness/eval/protocols.py", "harness/eval/metrics/recall.py", "harness/eval/metrics/eccv.py"} <= protocols
    never = {"harness/eval/protocols.py", "harness/run/jobs.py", "harness/run/plan.py", "harness/cli/app.py",
             "harness/core/results.py", "harness/report/write.py"}
    assert not (train | matrix) & never
    assert not any(p.startswith("harness/eval/metrics/") for p in matrix)
    assert "harness/eval/metrics/bootstrap.py" not in train  # intervals never pick an epoch


def test_stage_hashes_do_not_depend_on_pythonhashseed():
    code = "from harness.core.code_identity import STAGES, stage_hash; print([stage_hash(s) for s in STAGES])"
    outs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                           capture_output=True, text=True, check=True).stdout for seed in ("0", "1", "12345")}
    assert len(outs) == 1
    assert outs.pop().strip() == str([stage_hash(s) for s in STAGES])


def _finished_eval(tmp_path: Path, protocols: dict, protocol_code: str = "p1") -> tuple[ResultStore, Job]:
    store = ResultStore(tmp_path / "results")
    cfg = JobConfig.from_dict({"stage": "evaluate", "method": "tiny", "variant": "a", "dataset": "demo",
                               "seed": 0, "source": "seed0", "train_job": "t", "split": "test"})
    job = Job("demo/tiny-a-seed0/eval", "evaluate", "tiny", "a", "demo", 0, cfg, key="k1",
              identity={"config": "c", "data": "d", "code": "m", "scheme": IDENTITY_SCHEME}, protocols="p2")
    d = store.start(job.name, {**cfg.as_dict(), "key": "k1", "identity": dict(job.identity)}, {})
    save_npy(d / "sims.npy", np.eye(2, 10, dtype=np.float32))
    save_npy(d / "image_of_caption.npy", np.arange(10) // 5)
    store.finish(job.name, {"stage": "evaluate", "protocols": protocols, "protocol_code": protocol_code})
    return store, job


def test_protocols_needing_the_model_rerun_the_evaluation_others_are_recomputed(tmp_path):
    recall = {"rsum": 100.0}
    store, job = _finished_eval(tmp_path / "a", {"recall": recall, "sts": {"defined": False, "reason": "no root"}})
    assert refresh_action(store, job) == RECOMPUTE
    store, job = _finished_eval(tmp_path / "b", {"recall": recall, "sts": {"avg": 70.0}})
    assert refresh_action(store, job) == REEVALUATE
    store, job = _finished_eval(tmp_path / "c", {"recall": recall}, protocol_code="p2")
    assert refresh_action(store, job) is None  # up to date
    assert needs_model("cxc", {"i2t": {"cxc_r1": 1.0}, "t2t": {"cxc_r1": 2.0}})
    assert not needs_model("cxc", {"i2t": {"cxc_r1": 1.0}, "t2t": {"defined": False, "reason": "ensemble"}})


def test_an_identity_of_the_previous_scheme_is_named_as_such(tmp_path):
    _, job = _finished_eval(tmp_path, {})
    reason = changed_parts({"config": "c", "data": "d", "code": "old"}, job)  # no scheme: written before
    assert "older itrbench" in reason
    assert changed_parts({**job.identity, "code": "x"}, job) == "code changed"
    assert json.dumps(job.to_dict())  # the protocol identity travels with the job (subprocess executors)
    assert Job.from_dict(job.to_dict()).protocols == "p2"


def test_report_lists_recomputed_and_out_of_date_protocols(tmp_path):
    from types import SimpleNamespace

    from harness.report.protocol_notes import OLDER, protocol_notes

    def run(name: str, metrics: dict) -> SimpleNamespace:
        return SimpleNamespace(path=tmp_path / name, metrics=metrics)

    runs = [run("fresh", {"protocol_code": "now"}), run("legacy", {}),
            run("old", {"protocol_code": "before"}),
            run("redone", {"protocol_code": "now", "protocols_recomputed": {"at": "2026-01-02 03:04:05"}})]
    lines = "\n".join(protocol_notes([SimpleNamespace(model="m/a", runs=runs)], tmp_path, current="now"))
    assert "`old`" in lines and OLDER in lines
    assert "`redone`" in lines and "recomputed from the stored matrix (2026-01-02 03:04:05)" in lines
    assert "`fresh`" not in lines and "`legacy`" not in lines
    assert protocol_notes([SimpleNamespace(model="m/a", runs=runs[:2])], tmp_path, current="now") == []


def test_the_robustness_pass_is_in_the_robustness_identity_only(tmp_path):
    """An edit of evaluation.py's robustness pass reruns robustness jobs, never rescores a matrix."""
    from harness.core.code_identity import EVALUATION, PROTOCOL_PARTS, ROBUSTNESS_PARTS, hash_files, module_files

    src = module_files(EVALUATION)[0]
    edited = tmp_path / src.name
    text = src.read_text()
    marker = "def evaluate_robustness("
    assert marker in text
    start = text.index(marker)
    body = text.index("\n", text.index(":\n", start)) + 1  # first line of the function's body
    edited.write_text(text[:body] + "    _edited = 1\n" + text[body:])
    matrix_parts = (*PROTOCOL_PARTS, *ROBUSTNESS_PARTS)
    assert hash_files([src], without={src: matrix_parts}, root=src.parent) == \
        hash_files([edited], without={edited: matrix_parts}, root=tmp_path)
    assert hash_files([src], only={src: ROBUSTNESS_PARTS}, root=src.parent) != \
        hash_files([edited], only={edited: ROBUSTNESS_PARTS}, root=tmp_path)
