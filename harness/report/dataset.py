"""reports/<dataset>.md: every method x every protocol, efficiency, seed spread and paired significance."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.core.results import JobResult
from harness.data.demo import SPLITS, chance_rsum
from harness.eval.protocols import HEADLINE_PREFERENCE
from harness.report.cascades import cascade_section, cost_section
from harness.report.columns import (
    RECALL_PROTOCOLS,
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
from harness.report.protocol_notes import protocol_notes
from harness.report.runs import RETRAINED, RunGroup, Stat, get_path, matching_reported, plain_stat, stored_key
from harness.report.significance import RESAMPLES, group_values, paired_p
from harness.spec.registry import Registry


@dataclass
class Significance:
    """Paired bootstrap of every row against the best row of one recall protocol."""

    rows: list[RunGroup]
    protocol: str
    best: RunGroup | None
    p: dict[int, float | None]  # row index -> p-value (None: no stored matrix / different shapes)
    note: str = ""

    def text(self, i: int) -> str:
        if not _finite_rsum(self.rows[i], self.protocol):
            return NOT_RANKED
        if self.best is None:
            return MISSING
        if self.rows[i] is self.best:
            return "best"
        return p_value_text(self.p.get(i), RESAMPLES)


NOT_RANKED = "not ranked: rsum is not finite"


def _finite_rsum(g: RunGroup, protocol: str) -> bool:
    s = g.stat(protocol, "rsum")
    return not isinstance(s, Stat) or math.isfinite(s.mean)


def significance(groups: Sequence[RunGroup], protocol: str) -> Significance:
    """Rows in registry order, those whose rsum is NaN / inf last (never the best, marked not ranked)."""
    rows = sorted((g for g in groups if g.has_protocol(protocol)), key=lambda g: not _finite_rsum(g, protocol))
    best = _best(rows, protocol)
    if best is None or len(rows) < 2:
        return Significance(rows, protocol, best, {})
    ref = group_values(best.runs, protocol)
    if ref is None:
        return Significance(rows, protocol, best, {}, "the best row has no stored similarity matrix")
    p: dict[int, float | None] = {}
    for i, g in enumerate(rows):
        if g is best or not _finite_rsum(g, protocol):
            continue
        mine = group_values(g.runs, protocol)
        p[i] = None if mine is None or mine[0].shape != ref[0].shape else paired_p(mine[0], ref[0], ref[1])
    return Significance(rows, protocol, best, p)


def _best(groups: Sequence[RunGroup], protocol: str) -> RunGroup | None:
    scored = [(s.mean, i) for i, g in enumerate(groups)  # a cascade has no stored matrix to test against
              if not g.cascade and isinstance(s := g.stat(protocol, "rsum"), Stat) and math.isfinite(s.mean)]
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


def _recall_section(registry: Registry, groups: Sequence[RunGroup], protocol: str, sig: Significance) -> list[str]:
    rows_groups = sig.rows
    cols = metric_columns(rows_groups, protocol)
    best = sig.best
    reps = [matching_reported(registry, g, protocol) for g in rows_groups]
    stats = [{c: g.stat(protocol, c) for c in cols} for g in rows_groups]
    decimals = {c: decimals_for([s.mean for st in stats if isinstance(s := st[c], Stat)]) for c in cols}
    rows = []
    for i, (g, rep, st) in enumerate(zip(rows_groups, reps, stats)):
        cells = [compare_reported(st[c], rep, c, decimals[c])[0] for c in cols]
        rsum = st["rsum"]
        ci = interval_text(rsum.interval, 1) + (" ±2σ" if rsum.n > 1 else "") if isinstance(rsum, Stat) \
            and rsum.interval else MISSING
        where = escape(f"{rep.table or rep.source}") if rep else MISSING
        rows.append([escape(g.model), escape(g.source), *cells, ci, sig.text(i), _ties(g, protocol), where])
    header = ["model", "reproduced by", *[column_name(c) for c in cols], "rsum interval", "p vs best (rsum)",
              "tie-affected queries (rsum gain)", "reported in"]
    out = table(header, rows, ["l", "l"] + ["r"] * (len(cols) + 3) + ["l"]) + [""]
    if best is not None and len(rows_groups) > 1:
        out += [f"*p vs best*: two-sided paired bootstrap ({RESAMPLES} resamples of the images, each with its "
                f"caption queries{', within each fold' if protocol == 'coco1k' else ''}) of the per-query rsum "
                f"contributions against the best row, **{escape(best.label)}**, computed from the stored "
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
    cols = metric_columns(rows_groups, protocol, reported_keys)
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
    for protocol, sig in sigs.items():
        if sig.best is None:
            continue
        best = sig.best.stat(protocol, "rsum")
        tied = [g.label for i, g in enumerate(sig.rows) if (p := sig.p.get(i)) is not None and p >= alpha]
        worse = [g.label for i, g in enumerate(sig.rows) if (p := sig.p.get(i)) is not None and p < alpha]
        untested = [g.label + ("" if _finite_rsum(g, protocol) else " (rsum not finite)")
                    for i, g in enumerate(sig.rows) if g is not sig.best and sig.p.get(i) is None]
        rows.append([f"`{protocol}`", f"{escape(sig.best.label)}: {stat_text(best, 1)}",
                     "; ".join(map(escape, tied)) or MISSING, "; ".join(map(escape, worse)) or MISSING,
                     "; ".join(map(escape, untested)) or MISSING])
    if not rows:
        return []
    return ["## At a glance", "",
            f"The best row by rsum per recall protocol, and the rows whose rsum differs from it significantly "
            f"(paired bootstrap p < {alpha}) or not. Details in each protocol's section.", ""] + table(
        ["protocol", "best (rsum)", f"not significantly different (p ≥ {alpha})", f"significantly lower (p < {alpha})",
         "not tested (no stored matrix)"], rows, ["l"] * 5) + [""]


def _train_jobs(run: JobResult, jobs: Mapping[str, JobResult]) -> list[JobResult] | None:
    """The training job(s) behind an evaluation (one per ensemble member); None when unknown."""
    names = [run.job.train_job] if run.job.train_job else []
    for member in run.job.members or ():
        m = jobs.get(member)
        if m is None or not m.job.train_job:
            return None
        names.append(m.job.train_job)
    found = [jobs.get(n) for n in names]
    return found if found and all(found) else None


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
                         escape((env.get("packages") or {}).get("torch") or MISSING)])
    return table(["result folder", "model", "seed", "code revision", "device", "torch"], rows,
                 ["l", "l", "r", "l", "l", "l"]) + [""]


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
    sigs = {p: significance(groups, p) for p in protocols if p in RECALL_PROTOCOLS}
    out += _at_a_glance(sigs)
    for protocol in protocols:
        out += [f"## {protocol_title(protocol)} (`{protocol}`)", ""]
        if not any(g.has_protocol(protocol) for g in groups):
            out += [f"No result has computed `{protocol}` yet.", ""]
            continue
        if protocol in sigs:
            out += _recall_section(registry, groups, protocol, sigs[protocol])
        else:
            out += _generic_section(registry, groups, protocol)
        missing = [g for g in groups if not g.has_protocol(protocol)]
        if missing:
            out += [f"Not computed for: {', '.join(escape(g.label) for g in missing)}.", ""]
        out += _undefined_lines(groups, protocol)
    out += cascade_section(groups, [p for p in protocols if p in RECALL_PROTOCOLS])
    out += ["## Efficiency", ""] + _efficiency(groups, jobs)
    plot_md, plots = _efficiency_plot(dataset, groups, reports)
    out += plot_md
    cost_md, cost_plots = cost_section(dataset, groups, reports)
    out += cost_md
    plots = [*plots, *cost_plots]
    out += ["## Runs", ""] + _runs_table(groups, results_root)
    out += protocol_notes(groups, results_root)
    out += unfinished_jobs(results_root, dataset)
    return "\n".join(out).rstrip() + "\n", plots
