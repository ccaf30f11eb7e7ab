"""`plan_of(registry, methods, dataset, **settings)`: the plan of a campaign built from keyword settings, as the
CLI builds it (tests name only the settings they vary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.run.plan import Plan, build_plan
from harness.spec.campaign import Campaign
from harness.spec.registry import Registry


def plan_of(registry: Registry, methods: list[str], dataset: str, *, data_root: Path | None = None,
            data_fp: str | None = None, code: str | None = None, protocols: str | None = None,
            recipe_overrides: dict[str, Any] | None = None, **settings: Any) -> Plan:
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    campaign = Campaign(methods=tuple(methods), dataset=dataset, overrides=recipe_overrides or {}, **settings)
    return build_plan(registry, campaign, data_root=data_root, data_fp=data_fp, code=code, protocols=protocols)
