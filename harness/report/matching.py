"""Which reported rows a run reproduces.

A reported row describes one model: its method, variant and dataset, and the settings that matter
(the method's `settings:` in the registry: loss, batch size, objective, ensemble members, checkpoint epoch)
plus the numeric precision (fp32 unless the row says otherwise). A row that does not name a setting
describes the default recipe: its value is read from the registry's recipe of (variant, dataset) and the
variant's options, exactly as a run's value is read from the recipe it trained with. A run matches a row
only when every setting agrees.

Settings come in two kinds:
- recipe choices (`key: [values]` or `key: {value: {recipe key: value}}` in the registry): resolved from
  the recipe on both sides, so a row silent on `loss` means the default `loss`;
- facts about a run (`key: null`, the checkpoint epoch): a row that names one matches only runs that
  recorded the same value; a row silent on it matches any run.

A run's recipe: the training job's recipe for a retrained run; the registry's default recipe (with the
evaluation's `overrides` and `recipe`, if stored) for an official checkpoint or an imported matrix; an
ensemble takes the values its members share. Its declared `setting` (config.yaml) wins over all of these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.core.jobconfig import JobConfig
from harness.core.results import ResultStore
from harness.spec.registry import Method, Registry, RegistryError, Reported

PRECISION, DEFAULT_PRECISION = "precision", "fp32"
EPOCH = "epoch"  # the checkpoint epoch: 1-based, as the official checkpoints print it
MEMBERS = "members"
MIXED = "mixed"  # an ensemble whose members differ in a setting


def fact_keys(method: Method | None) -> frozenset[str]:
    """Settings that are facts about a run (any value, no default), not recipe choices."""
    if method is None:
        return frozenset({EPOCH})
    return frozenset({k for k, allowed in method.settings.items() if not allowed})


def variant_recipe(method: Method, variant: str, dataset: str | None) -> dict[str, Any]:
    """The variant's options under the registry's merged recipe of (variant, dataset); {} where unknown."""
    spec = method.variants.get(variant)
    if spec is None:
        return {}
    out = dict(spec.options)
    if dataset is not None:
        try:
            out.update(method.recipe(variant, dataset))
        except RegistryError:  # no recipe for this dataset (e.g. a dataset only evaluated on)
            pass
    return out


def _norm(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    return value


def same(a: Any, b: Any) -> bool:
    """Setting values compared as a reader would: 32 == 32.0 == "32"; an absent flag is false."""
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b) if (a is None or isinstance(a, bool)) and (b is None or isinstance(b, bool)) \
            else False
    return _norm(a) == _norm(b)


def from_recipe(method: Method, key: str, recipe: Mapping[str, Any]) -> Any:
    """The value of setting `key` a merged recipe stands for (None where the recipe does not say).

    With `key: {value: {recipe key: value}}` in the registry, the value whose recipe values all hold (the
    most specific one when several do); otherwise the recipe's own `key`."""
    implied = (getattr(method, "setting_recipes", None) or {}).get(key)
    if implied:
        best, size = None, -1
        for value, keys in implied.items():
            if keys and len(keys) > size and all(same(recipe.get(k), v) for k, v in keys.items()):
                best, size = value, len(keys)
        return best
    return recipe.get(key)


def _members_of_variant(method: Method, variant: str) -> str | None:
    spec = method.variants.get(variant)
    if spec is None or not spec.members:
        return None
    return _join(list(spec.members))


def _join(variants: Sequence[str]) -> str:
    unique = list(dict.fromkeys(variants))
    return unique[0] if len(unique) == 1 else "+".join(unique)


def default_setting(method: Method, variant: str, dataset: str | None,
                    recipe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every recipe-choice setting of the method, as `recipe` (default: the registry's recipe) resolves it."""
    recipe = variant_recipe(method, variant, dataset) if recipe is None else recipe
    facts = fact_keys(method)
    out: dict[str, Any] = {PRECISION: DEFAULT_PRECISION}
    for key in method.settings:
        if key in facts:
            continue
        out[key] = _members_of_variant(method, variant) if key == MEMBERS else from_recipe(method, key, recipe)
    return out


def row_setting(registry: Registry, rep: Reported) -> dict[str, Any]:
    """What a reported row describes: its declared settings over the defaults of its variant's recipe."""
    method = registry.methods.get(rep.method)
    out = default_setting(method, rep.variant, rep.dataset) if method is not None else {PRECISION: DEFAULT_PRECISION}
    out.update(rep.setting)
    return {k: v for k, v in out.items() if v is not None}


def agrees(row: Mapping[str, Any], run: Mapping[str, Any], facts: frozenset[str] = frozenset({EPOCH})) -> bool:
    """Whether a run's resolved setting agrees with a row's on every key either names."""
    for key in set(row) | set(run):
        r, u = row.get(key), run.get(key)
        if key in facts and r is None:
            continue
        if not same(r, u):
            return False
    return True


def row_matches(registry: Registry, rep: Reported, method: str, variant: str, dataset: str,
                setting: Mapping[str, Any]) -> bool:
    if (rep.method, rep.variant, rep.dataset) != (method, variant, dataset):
        return False
    return agrees(row_setting(registry, rep), setting, fact_keys(registry.methods.get(method)))


# ---- runs ---------------------------------------------------------------------------------------------------

def _job(store: ResultStore | None, name: Any):
    if store is None or not name or not isinstance(name, str):
        return None
    try:
        if not (store.job_dir(name) / "config.yaml").is_file():
            return None
        return store.load(name)
    except (OSError, ValueError):
        return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def run_epoch(metrics: Mapping[str, Any] | None = None, train_metrics: Mapping[str, Any] | None = None) -> int | None:
    """The checkpoint epoch of an evaluation, 1-based: recorded in its metrics (`checkpoint_epoch`), or the best
    epoch of its training job (stored 0-based, + 1)."""
    value = _as_int((metrics or {}).get("checkpoint_epoch"))
    if value is not None:
        return value
    if train_metrics is not None:
        best = _as_int(train_metrics.get("best_epoch"))
        if best is not None and best >= 0:
            return best + 1
    return None


def resolve_run(registry: Registry, config: JobConfig | Mapping[str, Any], store: ResultStore | None = None,
                metrics: Mapping[str, Any] | None = None, train_recipe: Mapping[str, Any] | None = None,
                _depth: int = 0) -> dict[str, Any]:
    """What an evaluation is a run of: every setting of its method, resolved from what the run stored
    (its job config, typed or as stored in config.yaml).

    `train_recipe` stands in for the training job's recipe when no store is given."""
    job = JobConfig.stored(config)
    declared = dict(job.setting or {})
    method = registry.methods.get(job.method)
    precision = job.precision or declared.get(PRECISION) or DEFAULT_PRECISION
    if method is None:
        return {k: v for k, v in {PRECISION: precision, **declared}.items() if v is not None}
    variant, dataset = job.variant, job.dataset
    members = job.members or ()
    member_jobs = [_job(store, m) for m in members] if _depth < 3 else []
    if members and member_jobs and all(j is not None for j in member_jobs):
        parts = [resolve_run(registry, j.config, store, j.metrics, _depth=_depth + 1) for j in member_jobs]
        out: dict[str, Any] = {}
        for key in dict.fromkeys(k for p in parts for k in p):
            values = [p.get(key) for p in parts]
            out[key] = values[0] if all(same(v, values[0]) for v in values) else MIXED
        if MEMBERS in method.settings:
            out[MEMBERS] = _join([j.job.variant for j in member_jobs])
        if out.get(EPOCH) == MIXED:  # members of different epochs: no epoch of its own
            del out[EPOCH]
    else:
        recipe = variant_recipe(method, variant, dataset)
        train = _job(store, job.train_job)
        if train is not None:
            recipe.update(train.job.options or {})
            recipe.update(train.job.recipe or {})
        if train_recipe is not None:
            recipe.update(train_recipe)
        for extra in (job.recipe, job.overrides):  # an imported matrix's recipe; --set overrides of the evaluation
            if isinstance(extra, Mapping):
                recipe.update(extra)
        out = default_setting(method, variant, dataset, recipe)
        if EPOCH in fact_keys(method):
            out[EPOCH] = run_epoch(metrics, train.metrics if train is not None else None)
    out[PRECISION] = precision
    out.update(declared)
    return {k: v for k, v in out.items() if v is not None}
