"""reports/<dataset>.md: every method x every protocol, efficiency, seed spread and paired significance."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.core.hardware import hardware_summary
from harness.core.results import JobResult
from harness.data.demo import SPLITS, chance_rsum
from harness.eval.metrics.recall import MatrixError
from harness.eval.protocols import HEADLINE_PREFERENCE, Protocol, wanted
from harness.report.cascades import cascade_section, cost_section
from harness.report.columns import (
    column_name,
    metric_columns,
    protocol_title,
    split_columns,
    undefined_notes,
)
from harness.report.markdown import (
    MISSING,
    compare_reported,
    decimals_for,
    escape,
    image,
    interval_text,
    number,
    p_value_text,
    stat_text,
    table,
)
from harness.report.plots import EffPoint, effectiveness_vs_efficiency
from harness.report.problems import non_finite_results, problems_section
from harness.report.protocol_notes import protocol_notes
from harness.report.robustness import robustness_section
from harness.report.runs import RETRAINED, RunGroup, Stat, get_path, matching_reported, plain_stat, stored_key
from harness.report.significance import RESAMPLES, StoredMatrixError, group_values, paired_p
from harness.report.training import health_section, train_jobs_of
from harness.spec.protocol_plugins import protocol_identity
from harness.spec.registry import Registry


@dataclass
class Significance:
    """Paired bootstrap of every row against the best row of one protocol, on the headline its declared
    paired test averages (`Protocol.paired.field`, rsum for the recall protocols)."""

    rows: list[RunGroup]
    protocol: str
    best: RunGroup | None
    p: dict[int, float | None]  # row index -> p-value (None: no stored matrix / different shapes)
    note: str = ""
    problems: dict[int, str] = field(default_factory=dict)  # row index -> why its stored matrix is unusable
    field: str = "rsum"  # the headline the paired test averages (declared after `problems`: it shadows field())

    def text(self, i: int) -> str:
        if i in self.problems:
            return f"not tested: {self.problems[i]}"
        if not _finite(self.rows[i], self.protocol, self.field):
            return NOT_RANKED.replace("rsum", self.field)
        if self.best is None:
            return MISSING
        if self.rows[i] is self.best:
            return "best"
        return p_value_text(self.p.get(i), RESAMPLES)


NOT_RANKED = "not ranked: rsum is not finite"


def _finite(g: RunGroup, protocol: str, key: str = "rsum") -> bool:
    s = g.stat(protocol, key)
    return not isinstance(s, Stat) or math.isfinite(s.mean)


def significance(groups: Sequence[RunGroup], proto: Protocol, bad: dict[Path, str] | None = None) -> Significance:
    """Rows in registry order, those whose headline is NaN / inf last (never the best, marked not ranked).
    `proto` declares the paired test (`proto.paired`, not None).

    A row whose stored matrix is unusable (unreadable, truncated, not 2-D, NaN / inf; moved aside with a
    warning) or does not fit the protocol is not tested, with the reason naming its job folder; `bad` (run
    folder -> problem) carries what was set aside from one protocol's section to the next."""
    test, protocol = proto.paired, proto.name
    assert test is not None
    key = test.field
    bad = {} if bad is None else bad
    rows = sorted((g for g in groups if g.has_protocol(protocol)), key=lambda g: not _finite(g, protocol, key))
    best = _best(rows, protocol, key, proto.higher_is_better(key))
    if best is None or len(rows) < 2:
        return Significance(rows, protocol, best, {}, field=key)
    problems: dict[int, str] = {}

    def values(i: int, g: RunGroup) -> tuple[np.ndarray, np.ndarray | None] | None:
        known = [bad[r.path] for r in g.runs if r.path in bad]
        if known:
            problems[i] = known[0]
            return None
        try:
            return group_values(g.runs, test)
        except StoredMatrixError as exc:
            bad.update({r.path: str(exc) for r in g.runs if str(exc).startswith(f"{r.path}:")})
            problems[i] = str(exc)
        except MatrixError as exc:  # a readable matrix that does not fit the protocol: kept, named
            problems[i] = f"{', '.join(str(r.path) for r in g.runs)}: {exc}"
        except (ValueError, OSError) as exc:  # a stored matrix the declared per-query values cannot read
            problems[i] = f"{', '.join(str(r.path) for r in g.runs)}: the per-query values could not be computed " \
                          f"({exc})"
        return None

    ref = values(rows.index(best), best)
    if ref is None:
        why = problems.get(rows.index(best), "the best row has no stored similarity matrix or rank summary")
        return Significance(rows, protocol, best, {}, why, problems, field=key)
    p: dict[int, float | None] = {}
    for i, g in enumerate(rows):
        if g is best or not _finite(g, protocol, key):
            continue
        mine = values(i, g)
        p[i] = None if mine is None or mine[0].shape != ref[0].shape else paired_p(mine[0], ref[0], ref[1])
    return Significance(rows, protocol, best, p, problems=problems, field=key)


def _best(groups: Sequence[RunGroup], protocol: str, key: str = "rsum", higher: bool = True) -> RunGroup | None:
    scored = [(s.mean if higher else -s.mean, i) for i, g in enumerate(groups)  # a cascade has no matrix to test
              if not g.cascade and isinstance(s := g.stat(protocol, key), Stat) and math.isfinite(s.mean)]
    return groups[max(scored, key=lambda t: (t[0], -t[1]))[1]] if scored else None


def _ties(g: RunGroup, protocol: str) -> str:
    counts, gains = [], []
    for run in g.runs:
        ties = get_path(run.metrics, f"protocols.{protocol}.ties")
        rsum = get_path(run.metrics, f"protocols.{protocol}.rsum")
        if not isinstance(ties, Mapping):
            continue
        counts.append(int(ties.get("i2t_affected_queries", 0)) + int(ties.get("t2i_affected_queries", 0)))
        if isinstance(ties.get("rsum_tie_optimistic"), (int, float)) and isinstance(rsum, (int, float)):
            gains.append(float(ties["rsum_tie_optimistic"]) - float(rsum))
    if not counts:
        return MISSING
    text = str(counts[0]) if len(set(counts)) == 1 else f"{min(counts)}–{max(counts)}"
    return text + (f" (+{max(gains):.1f})" if gains and max(gains) > 0 else "")


def _paired_section(registry: Registry, proto: Protocol, sig: Significance) -> list[str]:
    """A protocol with a declared paired test: its declared columns, the interval of the tested headline, the
    p-value of each row against the best, the tie-affected queries (where the results count them)."""
    protocol, key = proto.name, sig.field
    assert proto.paired is not None
    rows_groups = sig.rows
    cols = metric_columns(rows_groups, protocol, table=registry.protocols)
    if key not in cols:
        cols.append(key)
    best = sig.best
    reps = [matching_reported(registry, g, protocol) for g in rows_groups]
    stats = [{c: g.stat(protocol, c) for c in cols} for g in rows_groups]
    decimals = {c: decimals_for([s.mean for st in stats if isinstance(s := st[c], Stat)]) for c in cols}
    ties = [_ties(g, protocol) for g in rows_groups]
    show_ties = any(t != MISSING for t in ties)
    name = column_name(key)
    rows = []
    for i, (g, rep, st) in enumerate(zip(rows_groups, reps, stats)):
        cells = [compare_reported(st[c], rep, c, decimals[c])[0] for c in cols]
        head = st[key]
        ci = interval_text(head.interval, 1) + (" ±2σ" if head.n > 1 else "") if isinstance(head, Stat) \
            and head.interval else MISSING
        where = escape(f"{rep.table or rep.source}") if rep else MISSING
        rows.append([escape(g.model), escape(g.source), *cells, ci, sig.text(i), *([ties[i]] if show_ties else []),
                     where])
    header = ["model", "reproduced by", *[column_name(c) for c in cols], f"{name} interval", f"p vs best ({name})",
              *(["tie-affected queries (rsum gain)"] if show_ties else []), "reported in"]
    out = table(header, rows, ["l", "l"] + ["r"] * (len(cols) + 2 + show_ties) + ["l"]) + [""]
    if best is not None and len(rows_groups) > 1:
        out += [f"*p vs best*: two-sided paired bootstrap ({RESAMPLES} resamples of the {proto.paired.unit}) of "
                f"the per-query {escape(name)} contributions against the best row, **{escape(best.label)}**, "
                "computed from the stored "
                "similarity matrices (runs of a retrained row are averaged per query; the test covers query "
                "sampling, not seed variance)." + (f" No p-values: {sig.note}." if sig.note else ""), ""]
    return out


def _generic_section(registry: Registry, groups: Sequence[RunGroup], protocol: str) -> list[str]:
    rows_groups = [g for g in groups if g.has_protocol(protocol)]
    reps = {id(g): matching_reported(registry, g, protocol) for g in rows_groups}
    # a reported key under the column of the statistic it is ("sts.stsb" is the stored "spearman.stsb")
    aliases: dict[int, dict[str, str]] = {}
    for g in rows_groups:
        rep = reps[id(g)]
        aliases[id(g)] = {stored_key(protocol, k): k for k in rep.values} if rep is not None else {}
    reported_keys = [c for g in rows_groups for c in aliases[id(g)]]
    cols = metric_columns(rows_groups, protocol, reported_keys, table=registry.protocols)
    out: list[str] = []
    if not cols:
        rows = [[escape(g.model), escape(g.source), stat_text(g.stat(protocol, "__any__"))] for g in rows_groups]
        return table(["model", "reproduced by", protocol], rows, ["l", "l", "l"]) + [""]
    for part, pcols in split_columns(cols, protocol):
        stats = [{c: g.stat(protocol, c) for c in pcols} for g in rows_groups]
        decimals = {c: decimals_for([s.mean for st in stats if isinstance(s := st[c], Stat)]) for c in pcols}
        rows = []
        for g, st in zip(rows_groups, stats):
            rep, alias = reps[id(g)], aliases[id(g)]
            rows.append([escape(g.model), escape(g.source),
                         *[compare_reported(st[c], rep, alias.get(c, c), decimals[c])[0] for c in pcols]])
        out += ([f"**{part}**", ""] if part else []) + table(["model", "reproduced by", *map(column_name, pcols)],
                                                             rows, ["l", "l"] + ["r"] * len(pcols)) + [""]
    return out


def _undefined_lines(groups: Sequence[RunGroup], protocol: str) -> list[str]:
    by_reason: dict[tuple[str, str], list[str]] = {}
    for g, what, reason in undefined_notes(groups, protocol):
        models = by_reason.setdefault((what, reason), [])
        if g.model not in models:
            models.append(g.model)
    if not by_reason:
        return []
    return ["Not defined:", ""] + [f"- {escape(what)} for {', '.join(escape(m) for m in models)}: {escape(reason)}"
                                   for (what, reason), models in by_reason.items()] + [""]


def _at_a_glance(sigs: Mapping[str, Significance], alpha: float = 0.05) -> list[str]:
    rows = []
    only_rsum = all(s.field == "rsum" for s in sigs.values())
    for protocol, sig in sigs.items():
        if sig.best is None:
            continue
        best = sig.best.stat(protocol, sig.field)
        tied = [g.label for i, g in enumerate(sig.rows) if (p := sig.p.get(i)) is not None and p >= alpha]
        worse = [g.label for i, g in enumerate(sig.rows) if (p := sig.p.get(i)) is not None and p < alpha]
        untested = [g.label + ("" if _finite(g, protocol, sig.field) else f" ({sig.field} not finite)")
                    for i, g in enumerate(sig.rows) if g is not sig.best and sig.p.get(i) is None]
        rows.append([f"`{protocol}`", f"{escape(sig.best.label)}: {stat_text(best, 1)}"
                     + ("" if only_rsum else f" ({escape(column_name(sig.field))})"),
                     "; ".join(map(escape, tied)) or MISSING, "; ".join(map(escape, worse)) or MISSING,
                     "; ".join(map(escape, untested)) or MISSING])
    if not rows:
        return []
    return ["## At a glance", "",
            (f"The best row by rsum per recall protocol, and the rows whose rsum differs from it significantly "
             f"(paired bootstrap p < {alpha}) or not. Details in each protocol's section." if only_rsum else
             f"The best row of each protocol with a paired test, by the headline the test averages (rsum for the "
             f"recall protocols), and the rows whose headline differs from it significantly (paired bootstrap "
             f"p < {alpha}) or not. Details in each protocol's section."), ""] + table(
        ["protocol", "best (rsum)" if only_rsum else "best (headline)",
         f"not significantly different (p ≥ {alpha})", f"significantly lower (p < {alpha})",
         "not tested (no stored matrix)"], rows, ["l"] * 5) + [""]


def _train_jobs(run: JobResult, jobs: Mapping[str, JobResult]) -> list[JobResult] | None:
    """The training job(s) behind an evaluation (one per ensemble member); None when unknown."""
    return train_jobs_of(run, jobs)


def _train_stat(g: RunGroup, jobs: Mapping[str, JobResult], key: str, scale: float = 1.0) -> Stat | None:
    if g.kind != RETRAINED:
        return None
    totals = []
    for run in g.runs:
        trains = _train_jobs(run, jobs)
        if trains is None:
            continue
        vals = [(t.metrics.get("efficiency") or {}).get(key) for t in trains]
        if all(isinstance(v, (int, float)) for v in vals):
            totals.append(sum(vals) * scale)
    return plain_stat(totals)


def _efficiency(groups: Sequence[RunGroup], jobs: Mapping[str, JobResult]) -> list[str]:
    rows = []
    for g in groups:
        params = g.efficiency("parameters")
        cells = [MISSING if params is None else f"{params.mean / 1e6:.2f} M"]
        for key, d in (("encode_ms_per_image", 3), ("encode_ms_per_caption", 3), ("scoring_seconds", 2)):
            cells.append(stat_text(g.efficiency(key), d))
        cells.append(stat_text(_train_stat(g, jobs, "gpu_hours"), 3))
        cells.append(stat_text(_train_stat(g, jobs, "train_wall_seconds", 1 / 3600), 3))
        cells.append(stat_text(g.efficiency("gpu_hours"), 4))
        rows.append([escape(g.model), escape(g.source), *cells])
    header = ["model", "reproduced by", "parameters", "encode ms / image", "encode ms / caption",
              "scoring s (full matrix)", "train GPU-hours", "train wall hours", "eval GPU-hours"]
    return table(header, rows, ["l", "l"] + ["r"] * 7) + [
        "", "Ensembles add up their members' parameters, encoding and scoring times and training costs. "
        "Training costs of official checkpoints are unknown (" + MISSING + "). GPU-hours are 0 for runs on CPU.", ""]


def _efficiency_plot(dataset: str, groups: Sequence[RunGroup], reports: Path) -> tuple[list[str], list[Path]]:
    protocol = next((p for p in HEADLINE_PREFERENCE if any(g.has_protocol(p) for g in groups)), None)
    if protocol is None:
        return [], []
    points = []
    for g in groups:
        rsum, secs = g.stat(protocol, "rsum"), g.efficiency("scoring_seconds")
        if isinstance(rsum, Stat) and secs is not None:
            points.append(EffPoint(f"{g.model} ({g.source.split(' (')[0]})", secs.mean, rsum.mean, rsum.std))
    path = effectiveness_vs_efficiency(points, protocol, f"{dataset}: {protocol} rsum vs scoring time",
                                       reports / "plots" / f"{dataset}-rsum-vs-scoring-time.png")
    if path is None:
        return [], []
    return [image(f"{dataset}: rsum vs scoring time", f"plots/{path.name}"), ""], [path]


def _runs_table(groups: Sequence[RunGroup], root: Path) -> list[str]:
    rows = []
    for g in groups:
        for run in g.runs:
            env = run.env or {}
            git = env.get("git") or {}
            rev = (git.get("revision") or "")[:10] + (" (dirty)" if git.get("dirty") else "")
            try:
                where = run.path.relative_to(root).as_posix()
            except ValueError:
                where = run.path.as_posix()
            rows.append([f"`{escape(where)}`", escape(g.model), number(run.job.seed, 0)
                         if isinstance(run.job.seed, int) else MISSING,
                         f"`{rev}`" if rev else MISSING, escape(env.get("device") or MISSING),
                         escape(hardware_summary(env)),
                         escape((env.get("packages") or {}).get("torch") or MISSING)])
    return table(["result folder", "model", "seed", "code revision", "device", "hardware", "torch"], rows,
                 ["l", "l", "r", "l", "l", "l", "l"]) + [""]


def unfinished_jobs(results_root: Path, dataset: str) -> list[str]:
    """Job folders of this dataset that were started but have no metrics.json (failed, interrupted, running)."""
    base = results_root / dataset
    if not base.is_dir():
        return []
    found = sorted(p.parent for p in base.glob("**/config.yaml") if not (p.parent / "metrics.json").is_file())
    if not found:
        return []
    rows = [[f"`{escape(p.relative_to(results_root).as_posix())}`",
             "yes" if (p / "job.log").is_file() else "no"] for p in found]
    return ["## Jobs without results", "",
            "Started but without metrics.json: failed, interrupted or still running. Their rows are missing above.",
            ""] + table(["result folder", "job.log"], rows, ["l", "l"]) + [""]


def demo_note(groups: Sequence[RunGroup], split: str = "test") -> list[str]:
    shapes = sorted({tuple(r.metrics.get("shape") or ()) for g in groups for r in g.runs} - {()})
    if not shapes and split in SPLITS:  # no result yet: the size of the demo's evaluation split
        n = SPLITS[split][1] - SPLITS[split][0]
        shapes = [(n, 5 * n)]
    lines = ["> **The demo's image features are synthetic**: region vectors generated from each image's own "
             "captions. Its numbers show that a pipeline runs end to end and learns; they say nothing about "
             "retrieval on real images and must not be compared with any paper."]
    for shape in shapes:
        lines.append(f"> Chance level for {shape[0]} images x {shape[1]} captions (a random scorer): rsum "
                     f"{chance_rsum(shape[0], shape[1] // shape[0] if shape[0] else 5):.1f}.")
    return ["\n>\n".join(lines), ""]


def dataset_report(registry: Registry, dataset: str, groups: Sequence[RunGroup], jobs: Mapping[str, JobResult],
                   reports: Path, results_root: Path) -> tuple[str, list[Path]]:
    """The markdown of reports/<dataset>.md and the plots it references."""
    groups = [g for g in groups if g.dataset == dataset]
    ds = registry.datasets.get(dataset)
    out = [f"# {dataset}: all methods, all protocols", ""]
    if ds is not None and ds.description:
        out += [escape(ds.description), ""]
    if dataset == "demo":
        out += demo_note(groups, ds.split if ds is not None else "test")
    out += ["Rows are model configurations: an official checkpoint, or a recipe retrained from scratch (mean ± "
            "sample std over its seeds). Cells read `reproduced (reported, delta)` where the registry holds a "
            f"reported number. {MISSING} = no result (never a zero); *not defined* = the protocol does not apply "
            "to the method (reason below the table). Recalls are in percent and tie-pessimistic. Numbers come "
            "from `results/` only.", ""]
    if not groups:
        out += ["No finished evaluation in results/ for this dataset yet.", ""]
        return "\n".join(out + unfinished_jobs(results_root, dataset)).rstrip() + "\n", []
    listed = list(ds.protocols) if ds is not None else []
    seen = [p for g in groups for r in g.runs for p in (r.metrics.get("protocols") or {})]
    protocols = list(dict.fromkeys(listed + seen))
    bad: dict[Path, str] = {}  # run folders whose stored matrix was set aside, shared by the protocols
    table_of = registry.protocols
    sigs = {p: significance(groups, table_of[p], bad) for p in protocols if p in table_of and table_of[p].paired}
    out += _at_a_glance(sigs)
    for protocol in protocols:
        out += [f"## {protocol_title(protocol, table_of)} (`{protocol}`)", ""]
        if not any(g.has_protocol(protocol) for g in groups):
            out += [f"No result has computed `{protocol}` yet.", ""]
            continue
        if protocol in sigs:
            out += _paired_section(registry, table_of[protocol], sigs[protocol])
        else:
            out += _generic_section(registry, groups, protocol)
        missing = [g for g in groups if not g.has_protocol(protocol)]
        if missing:
            out += [f"Not computed for: {', '.join(escape(g.label) for g in missing)}.", ""]
        out += _undefined_lines(groups, protocol)
    out += problems_section({**non_finite_results([r for g in groups for r in g.runs], warn=False), **bad},
                            results_root)
    out += cascade_section(groups, [p for p in protocols if p in registry.protocols
                                    and any(f.path == "rsum" for f in registry.protocols[p].fields)])
    out += ["## Efficiency", ""] + _efficiency(groups, jobs)
    plot_md, plots = _efficiency_plot(dataset, groups, reports)
    out += plot_md
    cost_md, cost_plots = cost_section(dataset, groups, reports)
    out += cost_md
    robust_md, robust_plots = robustness_section(dataset, jobs, reports)
    out += robust_md
    plots = [*plots, *cost_plots, *robust_plots]
    out += ["## Runs", ""] + _runs_table(groups, results_root)
    out += health_section(groups, jobs, results_root)
    out += protocol_notes(groups, results_root, protocol_identity(registry.protocols,
                                                                  wanted(ds.protocols if ds else protocols,
                                                                         registry.protocols)))
    out += unfinished_jobs(results_root, dataset)
    return "\n".join(out).rstrip() + "\n", plots
