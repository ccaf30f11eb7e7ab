"""Several results folders read as one store (`report --results A --results B`).

A job's identity is its stored `key` (config.yaml; the job's name where no key was stored). A key found
in several folders is one result when the copies hold the same numbers (the `protocols` of metrics.json):
the newest by finish time (the mtime of its metrics.json, written last) is kept and the others are named
in a note. Copies that hold different numbers are all kept, each marked as a conflict with the folder it
came from, so that the reports show them as separate, flagged rows instead of averaging them as seeds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import ItrbenchError
from harness.core.results import JobResult, ResultStore


class ResultsFolderError(ItrbenchError):
    """A --results folder given twice."""


@dataclass(frozen=True)
class MergeNote:
    """What merging did with one identity (or one job name) found in several folders."""

    identity: str
    dataset: str
    kept: tuple[str, ...]  # display paths of the results kept ("A/toy/x/eval")
    dropped: tuple[str, ...]  # older copies with the same numbers
    conflict: bool  # copies with different numbers: every one kept, flagged
    renamed: bool = False  # one job name with different identities (config, data or code differ)

    @property
    def text(self) -> str:
        if self.renamed:
            return (f"{self.identity}: different identities in {', '.join(self.kept)} (config, data or code "
                    "differ); shown as separate rows, flagged as conflicting")
        if self.conflict:
            return (f"{self.identity}: {len(self.kept)} results with different numbers ("
                    f"{', '.join(self.kept)}); all are shown, flagged as conflicting")
        return (f"{self.identity}: kept {self.kept[0]} (the newest); same numbers also in "
                f"{', '.join(self.dropped)}")


def finish_time(result: JobResult) -> float:
    """When a result finished: the modification time of its metrics.json (written last)."""
    try:
        return (result.path / "metrics.json").stat().st_mtime
    except OSError:
        return 0.0


def identity_of(result: JobResult, name: str) -> str:
    key = result.config.get("key")
    return str(key) if key else name


def _numbers(result: JobResult) -> str:
    return json.dumps(result.metrics.get("protocols") or {}, sort_keys=True, default=str)


def folder_labels(roots: Sequence[Path]) -> list[str]:
    """Short distinct names of the folders: their own names, with a number where two share one."""
    names = [r.name or str(r) for r in roots]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


class MergedStore(ResultStore):
    """Read-only view of several results folders; `root` is the first one (a single folder behaves exactly as a
    ResultStore). `finished()` returns the merged results; `conflict_of(result)` names the folder of a result
    whose identity holds different numbers elsewhere ("" for every other result)."""

    def __init__(self, roots: Sequence[str | Path]) -> None:
        roots = [Path(r) for r in roots]
        if not roots:
            raise ResultsFolderError("no results folder given: pass --results DIR")
        seen: dict[Path, Path] = {}
        for r in roots:  # a folder that does not exist holds no result (the CLI refuses it before)
            if r.resolve() in seen:
                raise ResultsFolderError(f"--results {r}: given twice (also as {seen[r.resolve()]}); name each "
                                         "folder once")
            seen[r.resolve()] = r
        super().__init__(roots[0])
        self.roots = roots
        self.labels = folder_labels(roots)
        self.notes: list[MergeNote] = []
        self._conflicts: dict[Path, str] = {}
        self._where: dict[str, Path] = {}  # job name -> the folder holding the kept copy
        self._merged = self._merge()

    def _merge(self) -> list[JobResult]:
        found: dict[str, list[tuple[int, str, JobResult]]] = {}
        for i, root in enumerate(self.roots):
            for res in ResultStore(root).finished():
                name = res.path.relative_to(root).as_posix()
                found.setdefault(identity_of(res, name), []).append((i, name, res))
        out: list[JobResult] = []
        for ident, copies in found.items():
            if len(copies) == 1:
                i, name, res = copies[0]
                self._where.setdefault(name, self.roots[i])
                out.append(res)
                continue
            shown = [f"{self.labels[i]}/{name}" for i, name, _ in copies]
            dataset = str(copies[0][2].config.get("dataset") or "")
            if len({_numbers(res) for _, _, res in copies}) > 1:
                for i, name, res in copies:
                    self._conflicts[res.path] = self.labels[i]
                    self._where.setdefault(name, self.roots[i])
                    out.append(res)
                self.notes.append(MergeNote(ident, dataset, tuple(shown), (), True))
                continue
            order = sorted(range(len(copies)), key=lambda k: (-finish_time(copies[k][2]), copies[k][0]))
            i, name, res = copies[order[0]]
            self._where[name] = self.roots[i]
            out.append(res)
            self.notes.append(MergeNote(ident, dataset, (shown[order[0]],), tuple(shown[k] for k in order[1:]),
                                        False))
        self._flag_renamed(out)
        return sorted(out, key=lambda r: (self.roots.index(self.root_of(r)), r.path.as_posix()))

    def _flag_renamed(self, results: list[JobResult]) -> None:
        """One job name kept from several folders under different identities (another config, data or code):
        never seeds of one row, so each is flagged with its folder."""
        by_name: dict[str, list[JobResult]] = {}
        for res in results:
            by_name.setdefault(self.name_of(res), []).append(res)
        for name, copies in by_name.items():
            folders = {self.root_of(r) for r in copies}
            if len(folders) < 2 or any(self.conflict_of(r) for r in copies):
                continue
            for res in copies:
                self._conflicts[res.path] = self.label_of(res)
            self.notes.append(MergeNote(name, str(copies[0].config.get("dataset") or ""),
                                        tuple(f"{self.label_of(r)}/{name}" for r in copies), (), True, True))

    def finished(self) -> list[JobResult]:
        return list(self._merged)

    def root_of(self, result: JobResult) -> Path:
        """The folder a result lies in."""
        for root in self.roots:
            if result.path.is_relative_to(root):
                return root
        return self.root

    def label_of(self, result: JobResult) -> str:
        return self.labels[self.roots.index(self.root_of(result))]

    def name_of(self, result: JobResult) -> str:
        """The result's job name: its path inside its folder."""
        return result.path.relative_to(self.root_of(result)).as_posix()

    def conflict_of(self, result: JobResult) -> str:
        return self._conflicts.get(result.path, "")

    def job_dir(self, name: str) -> Path:
        """The folder of job `name` in whichever results folder holds the kept copy (e.g. a training job that
        ran on another cluster than its evaluation)."""
        if name in self._where:
            return self._where[name] / name
        for root in self.roots:
            if (root / name / "config.yaml").is_file():
                return root / name
        return self.root / name

    def start(self, *args, **kwargs) -> Path:  # pragma: no cover - reports never write results
        raise ResultsFolderError("merged results folders are read-only")

    def finish(self, *args, **kwargs) -> Path:  # pragma: no cover
        raise ResultsFolderError("merged results folders are read-only")


def open_results(results: str | Path | Sequence[str | Path]) -> MergedStore:
    """One folder or several, as one store."""
    if isinstance(results, (str, Path)):
        results = [results]
    return MergedStore(list(results))
