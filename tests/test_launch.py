"""The local rank launcher (`harness.run.launch`): torch.distributed's environment per rank, one exit status, and a
failed rank stopping the others."""

from __future__ import annotations

import json
import sys
import time

from harness.run.launch import main, run_ranks

ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_every_rank_gets_its_environment(tmp_path):
    code = ("import json, os, sys; r = os.environ['RANK']; "
            f"open(sys.argv[1] + '/' + r + '.json', 'w').write(json.dumps({{k: os.environ[k] for k in {ENV!r}}}))")
    assert run_ranks([sys.executable, "-c", code, str(tmp_path)], 3) == 0
    seen = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(3)]
    assert [s["RANK"] for s in seen] == ["0", "1", "2"] and {s["WORLD_SIZE"] for s in seen} == {"3"}
    assert len({s["MASTER_PORT"] for s in seen}) == 1 and seen[0]["MASTER_ADDR"] == "127.0.0.1"


def test_a_failed_rank_stops_the_others_and_gives_its_exit_status(tmp_path):
    code = ("import os, sys, time\n"
            "if os.environ['RANK'] == '1': sys.exit(3)\n"
            "time.sleep(60); open(sys.argv[1] + '/finished', 'w')")
    t0 = time.monotonic()
    assert run_ranks([sys.executable, "-c", code, str(tmp_path)], 2) == 3
    assert time.monotonic() - t0 < 30 and not (tmp_path / "finished").exists()


def test_the_command_line_says_how_to_use_it(capsys):
    assert main(["2", sys.executable]) == 2
    assert "usage: python -m harness.run.launch N -- COMMAND" in capsys.readouterr().err
    assert main(["1", "--", sys.executable, "-c", "raise SystemExit(5)"]) == 5
