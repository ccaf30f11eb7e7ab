"""STS12-16, STS Benchmark and SICK-R test sets in SentEval's `data/downstream` layout.

The files are read the way SimCSE's SentEval (`senteval/sts.py`) reads them, so the sentence pairs, their
order and the kept gold scores are the same:

- STS12-16 (`STS/STS1x-en-test/STS.input.<subset>.txt` + `STS.gs.<subset>.txt`): the input is split into
  lines with `str.splitlines`, each line into two sentences at the tab; pairs whose gold line is empty are
  dropped (STS15 and STS16 have such lines).
- STS Benchmark (`STS/STSBenchmark/sts-test.csv`): tab-separated, score in column 5, sentences in 6 and 7.
- SICK-R (`SICK/SICK_test_annotated.txt`): a header line, then sentence A, sentence B, relatedness in
  columns 2-4.

SentEval tokenises every sentence with `str.split()` and its batcher re-joins the tokens with single spaces
(CUSA's `evaluation_sts.py` does exactly that), so a sentence here is `" ".join(text.split())`.
The data is downloaded by users (SentEval's `get_transfer_data.bash` layout); `check_senteval` names every
missing or malformed file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.errors import ItrbenchError

STS_YEARS = {
    "STS12": ("STS12-en-test", ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews")),
    "STS13": ("STS13-en-test", ("FNWN", "headlines", "OnWN")),  # SentEval ships STS13 without SMT
    "STS14": ("STS14-en-test", ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news")),
    "STS15": ("STS15-en-test", ("answers-forums", "answers-students", "belief", "headlines", "images")),
    "STS16": ("STS16-en-test", ("answer-answer", "headlines", "plagiarism", "postediting", "question-question")),
}
STSB_FILE = Path("STS") / "STSBenchmark" / "sts-test.csv"
SICK_FILE = Path("SICK") / "SICK_test_annotated.txt"
TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness")
TASK_KEYS = {"STS12": "sts12", "STS13": "sts13", "STS14": "sts14", "STS15": "sts15", "STS16": "sts16",
             "STSBenchmark": "stsb", "SICKRelatedness": "sickr"}


class SentEvalError(ItrbenchError):
    """A SentEval data file that is missing or not in the expected format."""


@dataclass(frozen=True)
class StsPairs:
    """Sentence pairs of one STS subset (or split) and their gold similarity scores."""

    name: str
    left: list[str]
    right: list[str]
    gold: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.gold)


def resolve_root(root: str | Path) -> Path:
    """The `downstream` folder: `root` itself, or `root/downstream` (SentEval's `data` folder)."""
    root = Path(root)
    if (root / "downstream").is_dir():
        return root / "downstream"
    return root


def _join(text: str) -> str:
    return " ".join(text.split())


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise SentEvalError(f"{path}: file not found (SentEval downstream layout expected)")
    try:
        with open(path, encoding="utf8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise SentEvalError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise SentEvalError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _score(text: str) -> float:
    """A gold score: a finite number (float() also takes 'nan' and 'inf', which would poison a correlation)."""
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(text)
    return value


def _file_lines(path: Path) -> list[str]:
    """The lines `for line in open(path)` yields (universal newlines), without their line ends."""
    lines = _read_text(path).split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_sts_subset(folder: Path, subset: str) -> StsPairs:
    """One STS12-16 subset, as SentEval's STSEval.loadFile reads it."""
    inp = folder / f"STS.input.{subset}.txt"
    gs = folder / f"STS.gs.{subset}.txt"
    lines = _read_text(inp).splitlines()
    gold_lines = _read_text(gs).splitlines()
    if len(lines) != len(gold_lines):
        raise SentEvalError(f"{gs}: {len(gold_lines)} lines but {inp} has {len(lines)}; expected one gold "
                            "line (possibly empty) per sentence pair")
    left, right, gold = [], [], []
    for i, (line, g) in enumerate(zip(lines, gold_lines), start=1):
        parts = line.split("\t")
        if len(parts) != 2:
            raise SentEvalError(f"{inp}:{i}: {len(parts)} tab-separated fields, expected 2 sentences")
        if g == "":
            continue
        try:
            gold.append(_score(g))
        except ValueError:
            raise SentEvalError(f"{gs}:{i}: gold score '{g}' is not a number") from None
        left.append(_join(parts[0]))
        right.append(_join(parts[1]))
    return StsPairs(subset, left, right, np.asarray(gold, dtype=np.float64))


def read_sts_year(root: str | Path, task: str) -> list[StsPairs]:
    """The subsets of one of STS12-16, in SentEval's order."""
    folder, subsets = STS_YEARS[task]
    base = resolve_root(root) / "STS" / folder
    return [read_sts_subset(base, s) for s in subsets]


def _scored_pairs(path: Path, lines: list[str], first: int, columns: tuple[int, int, int], expected: str,
                  score_name: str) -> StsPairs:
    """Tab-separated rows numbered from `first` -> pairs; `columns` = (score, sentence 1, sentence 2)."""
    score, a, b = columns
    left, right, gold = [], [], []
    for i, line in enumerate(lines, start=first):
        cols = line.strip().split("\t")
        if len(cols) <= max(columns):
            raise SentEvalError(f"{path}:{i}: {len(cols)} tab-separated columns, expected {expected}")
        try:
            gold.append(_score(cols[score]))
        except ValueError:
            raise SentEvalError(f"{path}:{i}: {score_name} '{cols[score]}' is not a number") from None
        left.append(_join(cols[a]))
        right.append(_join(cols[b]))
    return StsPairs("test", left, right, np.asarray(gold, dtype=np.float64))


def read_stsb(root: str | Path) -> StsPairs:
    """STS Benchmark test, as SimCSE's STSBenchmarkEval.loadFile reads `sts-test.csv`."""
    path = resolve_root(root) / STSB_FILE
    return _scored_pairs(path, _file_lines(path), 1, (4, 5, 6),
                         "at least 7 (genre, file, year, id, score, sentence 1, sentence 2)", "score")


def read_sick(root: str | Path) -> StsPairs:
    """SICK-R test, as SimCSE's SICKRelatednessEval.loadFile reads `SICK_test_annotated.txt`."""
    path = resolve_root(root) / SICK_FILE
    return _scored_pairs(path, _file_lines(path)[1:], 2, (3, 1, 2),
                         "pair_ID, sentence_A, sentence_B, relatedness_score, ...", "relatedness")


def load_task(root: str | Path, task: str) -> list[StsPairs]:
    """The evaluated pairs of `task` (one entry per subset for STS12-16, one test split otherwise)."""
    if task in STS_YEARS:
        return read_sts_year(root, task)
    if task == "STSBenchmark":
        return [read_stsb(root)]
    if task == "SICKRelatedness":
        return [read_sick(root)]
    raise SentEvalError(f"unknown STS task '{task}'; valid: {', '.join(TASKS)}")


def expected_files(task: str) -> list[Path]:
    """Paths (relative to `downstream`) that `task` reads."""
    if task in STS_YEARS:
        folder, subsets = STS_YEARS[task]
        return [Path("STS") / folder / f"STS.{kind}.{s}.txt" for s in subsets for kind in ("input", "gs")]
    return [STSB_FILE] if task == "STSBenchmark" else [SICK_FILE]


def check_senteval(root: str | Path, tasks: tuple[str, ...] = TASKS) -> list[str]:
    """Problems with the SentEval data under `root` for `tasks`, each naming its file; [] when valid."""
    base = resolve_root(root)
    if not base.is_dir():
        return [f"{root}: SentEval data folder does not exist (expected SentEval/data/downstream)"]
    problems = []
    for task in tasks:
        missing = [str(base / p) for p in expected_files(task) if not (base / p).is_file()]
        if missing:
            problems += [f"{m}: missing ({task})" for m in missing]
            continue
        try:
            pairs = load_task(base, task)
        except SentEvalError as exc:
            problems.append(str(exc))
            continue
        for p in pairs:
            if len(p) < 2:
                problems.append(f"{base}: {task} {p.name} has {len(p)} scored pairs; a correlation needs at least 2")
    return problems
