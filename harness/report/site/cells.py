"""Table cells of the site, from the markdown report's objects: a row's statistics (`RunGroup.stat`), its
reported counterpart (`matching_reported`) and the markdown's verdict (`compare_reported`'s flag)."""

from __future__ import annotations

from collections.abc import Sequence

from harness.report.markdown import MISSING, NOT_DEFINED, compare_reported, stat_text
from harness.report.runs import IMPORTED, MEMBER, OFFICIAL, RETRAINED, RunGroup, Stat, Undefined
from harness.report.site.html import el, esc, whisker
from harness.spec.registry import Reported

SOURCES = {OFFICIAL: "official", RETRAINED: "retrained", MEMBER: "retrained", IMPORTED: "imported"}
VERDICTS = {"within": "reproduced within interval", "outside": "outside the interval",
            "unchecked": "no interval stored", "missing": "not reproduced"}
SHORT = {"within": "within", "outside": "outside", "unchecked": "no interval", "missing": "not reproduced"}


def source_kind(g: RunGroup | None) -> str:
    """official / retrained / imported / baseline (or the row's own source name); 'not reproduced' for none."""
    if g is None:
        return "not reproduced"
    return "baseline" if g.baseline else SOURCES.get(g.kind, g.kind)


def verdict(stat: Stat | Undefined | None, rep: Reported | None, key: str) -> str | None:
    """within / outside / unchecked / missing for a reported number, exactly as the markdown flags it; None when
    the row reports no number at `key`."""
    if rep is None or rep.values.get(key) is None:
        return None
    if not isinstance(stat, Stat):
        return "missing"
    _, flagged = compare_reported(stat, rep, key, rep.places(key))
    if flagged:
        return "outside"
    return "unchecked" if stat.interval is None else "within"


def badge(kind: str | None) -> str:
    if kind is None:
        return ""
    return el("span", esc(SHORT[kind]), class_=f"badge {kind}", data_verdict=kind, title=VERDICTS[kind])


def metric_cell(stat: Stat | Undefined | None, rep: Reported | None, key: str, decimals: int,
                rep_key: str | None = None) -> str:
    """<td>: the reproduced value (± std over seeds), the reported one with the delta, and the verdict badge.
    `rep_key` is where the reported row holds this number (default `key`)."""
    rep_key = rep_key or key
    reported = rep.values.get(rep_key) if rep is not None else None
    places = rep.places(rep_key) if reported is not None else decimals
    text = esc(stat_text(stat, places)) if stat is not None else esc(MISSING)
    if isinstance(stat, Undefined):
        text = el("span", esc(NOT_DEFINED), title=stat.reason)
    if reported is not None:
        delta = f", {stat.mean - reported:+.{places}f}" if isinstance(stat, Stat) else ""
        text += " " + el("span", esc(f"(reported {reported:.{places}f}{delta})"), class_="rep")
    value = f"{stat.mean:.6g}" if isinstance(stat, Stat) else ""
    return el("td", text + badge(verdict(stat, rep, rep_key)), class_="num", data_value=value)


def span_of(values: Sequence[float | None]) -> tuple[float, float]:
    nums = [v for v in values if v is not None]
    return (min(nums), max(nums)) if nums else (0.0, 1.0)


def interval_cell(stat: Stat | Undefined | None, span: tuple[float, float], seeds: Sequence[float] = (),
                  reported: float | None = None, flagged: bool = False, decimals: int = 1) -> str:
    """<td>: the whisker of the interval (95% CI of one run, mean ± 2 std over seeds) with its bounds."""
    if not isinstance(stat, Stat):
        return el("td", esc(MISSING))
    lo, hi = stat.interval if stat.interval else (None, None)
    text = esc(f"[{lo:.{decimals}f}, {hi:.{decimals}f}] {stat.basis}") if lo is not None else esc("no interval")
    svg = whisker(lo, hi, stat.mean, span, seeds, reported, flagged)
    return el("td", svg + " " + el("span", text, class_="source"), data_value=f"{stat.mean:.6g}", class_="interval")


def stat_span(stats: Sequence[Stat | Undefined | None], extra: Sequence[float | None] = ()) -> tuple[float, float]:
    values: list[float | None] = list(extra)
    for s in stats:
        if isinstance(s, Stat):
            values += [s.mean, *(s.interval or ())]
    return span_of(values)
