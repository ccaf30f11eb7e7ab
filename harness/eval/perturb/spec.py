"""`--perturb text|image|all|NAME[@SEVERITY],...`: which perturbations a robustness pass runs."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from harness.core.errors import ItrbenchError
from harness.eval.perturb.image import IMAGE_CORRUPTIONS
from harness.eval.perturb.text import SEVERITIES, TEXT_PERTURBATIONS

DEFAULT_SEVERITY = 3
GROUPS = {"text": tuple(TEXT_PERTURBATIONS), "image": tuple(IMAGE_CORRUPTIONS),
          "all": (*TEXT_PERTURBATIONS, *IMAGE_CORRUPTIONS)}


class PerturbError(ItrbenchError):
    """A --perturb value naming no perturbation or no severity."""


@dataclass(frozen=True)
class Perturbation:
    name: str
    severity: int

    @property
    def modality(self) -> str:
        return "text" if self.name in TEXT_PERTURBATIONS else "image"

    @property
    def key(self) -> str:
        return f"{self.name}@{self.severity}"


def _severities(text: str, item: str) -> tuple[int, ...]:
    if text == "":
        return (DEFAULT_SEVERITY,)
    if text == "all":
        return SEVERITIES
    if text.isdigit() and int(text) in SEVERITIES:
        return (int(text),)
    raise PerturbError(f"--perturb {item}: severity {text!r} is not 1-5 or 'all' (e.g. keyboard@2, text@all)")


def parse_perturb(value: str) -> tuple[Perturbation, ...]:
    """The perturbations of a --perturb value, in the order given, each once. A group (text, image, all) or
    a name without @SEVERITY runs at severity 3; @all runs severities 1-5."""
    out: dict[str, Perturbation] = {}
    items = [s.strip() for s in str(value).split(",") if s.strip()]
    if not items:
        raise PerturbError("--perturb: empty; give text, image, all or perturbation names (e.g. keyboard@3)")
    for item in items:
        name, _, sev = item.partition("@")
        names = GROUPS.get(name) or ((name,) if name in GROUPS["all"] else None)
        if names is None:
            near = difflib.get_close_matches(name, [*GROUPS, *GROUPS["all"]], n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise PerturbError(f"--perturb {item}: unknown perturbation {name!r}{hint}; known: text, image, all, "
                               + ", ".join(GROUPS["all"]))
        for n in names:
            for s in _severities(sev, item):
                p = Perturbation(n, s)
                out.setdefault(p.key, p)
    return tuple(out.values())


def spec_text(perturbations: tuple[Perturbation, ...]) -> str:
    """The canonical form of a parsed --perturb value (part of a robustness job's identity)."""
    return ",".join(p.key for p in perturbations)
