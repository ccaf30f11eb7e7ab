"""Small HTML builders: every text that reaches a page passes `esc` (html.escape); attributes are quoted."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote

ASSETS = ("site.css", "site.js")


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def attrs(**values: object) -> str:
    """' a="x" data-y="z"' (underscores become dashes; None values are left out)."""
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in values.items() if v is not None)


def el(name: str, inner: str = "", **values: object) -> str:
    """An element whose `inner` is already HTML (build it from `esc`aped parts)."""
    return f"<{name}{attrs(**values)}>{inner}</{name}>"


def link(href: str, text: str, **values: object) -> str:
    """A relative link; the path is percent-encoded, the text escaped."""
    return el("a", esc(text), href=quote(href), **values)


def file_name(name: str) -> str:
    """A registry name as a safe file name stem."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def options(label: str, key: str, values: Iterable[str]) -> str:
    """A filter select over the rows' data-<key> attribute."""
    opts = el("option", "all", value="") + "".join(el("option", esc(v), value=v) for v in sorted(set(values)))
    return el("label", esc(label) + " " + el("select", opts, data_filter=key))


def filters(table_id: str, rows_keys: Sequence[tuple[str, str, Iterable[str]]]) -> str:
    """The filter bar of one table: a select per (label, data key, values) and a free-text box."""
    parts = [options(label, key, values) for label, key, values in rows_keys]
    parts.append(el("label", "text " + '<input type="search" data-filter="*" placeholder="filter rows">'))
    return el("div", " ".join(parts), class_="filters", data_table=table_id)


def table(table_id: str, header: Sequence[tuple[str, bool]], rows: Iterable[str]) -> str:
    """A table; header cells are (escaped-later text, sortable). Rows are finished <tr> strings."""
    head = "".join(el("th", esc(text) + (' <span class="arrow"></span>' if sortable else ""),
                      data_sort="1" if sortable else None, scope="col") for text, sortable in header)
    return el("div", el("table", el("thead", el("tr", head)) + el("tbody", "".join(rows)), id=table_id,
                        class_="board"), class_="scroll")


def page(title: str, nav: str, body: str) -> str:
    return ("<!DOCTYPE html>\n" + el("html", el("head", '<meta charset="utf-8">'
                                                      '<meta name="viewport" content="width=device-width">'
                                                      '<link rel="icon" href="data:,">'
                                                      + el("title", esc(title))
                                                      + '<link rel="stylesheet" href="site.css">')
                                     + el("body", el("nav", nav) + el("main", el("h1", esc(title)) + body)
                                          + '<script src="site.js"></script>'), lang="en") + "\n")


def whisker(lo: float | None, hi: float | None, mean: float, span: tuple[float, float], points: Sequence[float] = (),
            reported: float | None = None, outside: bool = False) -> str:
    """An inline SVG: the interval [lo, hi] as a whisker, the mean as a dot, seeds as ticks, the reported number
    as a diamond (red when outside the interval); `span` is the scale shared by the column."""
    w, h, pad = 120.0, 16.0, 4.0
    a, b = span
    scale = (w - 2 * pad) / (b - a) if b > a else 0.0

    def x(v: float) -> float:
        return round(pad + (v - a) * scale if scale else w / 2, 1)

    parts = []
    if lo is not None and hi is not None:
        parts.append(f'<line x1="{x(lo)}" x2="{x(hi)}" y1="8" y2="8" class="wl"/>'
                     f'<line x1="{x(lo)}" x2="{x(lo)}" y1="4" y2="12" class="wl"/>'
                     f'<line x1="{x(hi)}" x2="{x(hi)}" y1="4" y2="12" class="wl"/>')
    parts += [f'<line x1="{x(p)}" x2="{x(p)}" y1="3" y2="6" class="ws"/>' for p in points]
    parts.append(f'<circle cx="{x(mean)}" cy="8" r="3" class="wm"/>')
    if reported is not None:
        rx = x(reported)
        parts.append(f'<path d="M{rx} 10 l3 3 l-3 3 l-3 -3 z" class="{"wo" if outside else "wr"}"/>')
    return (f'<svg class="whisker" width="{int(w)}" height="{int(h)}" viewBox="0 0 {int(w)} {int(h)}" '
            f'role="img" aria-label="interval">{"".join(parts)}</svg>')
