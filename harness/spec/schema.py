"""The strict registry schema: the keys each section may hold and the type of each value.

`check_document` walks a (merged) registry document before it is turned into typed objects. An unknown key is
an error naming the nearest valid key, the file and the line (`registry.yaml:12: datasets.mine: unknown key
'captions_per_imag'; did you mean 'captions_per_image'?`); so is a value of the wrong type or out of range.
Cross-references (a recipe naming an unknown dataset, a reported row's protocol) are checked by
`harness.spec.registry.parse_registry` once every section is known.

A new section or key is one entry in the tables below (marked "sections" and "keys"), with its value check.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.data.layouts import LAYOUTS
from harness.spec.errors import RegistryError, nearest
from harness.spec.yaml_lines import location

Check = Callable[[Any], "str | None"]  # a value -> what is wrong with it (None: fine)


@dataclass(frozen=True)
class Key:
    check: Check
    required: bool = False


# ---- value checks -----------------------------------------------------------------------------------------

def text(v: Any) -> str | None:
    return None if isinstance(v, str) else f"expected a string, found {v!r}"


def optional_text(v: Any) -> str | None:
    return None if v is None or isinstance(v, str) else f"expected a string or null, found {v!r}"


def flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"expected true or false, found {v!r}"


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def positive_int(v: Any) -> str | None:
    return None if _is_count(v) else f"expected a positive integer, found {v!r}"


def optional_positive_int(v: Any) -> str | None:
    return None if v is None or _is_count(v) else f"expected a positive integer or null, found {v!r}"


def names(v: Any) -> str | None:
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v):
        return None
    return f"expected a list of names, found {v!r}"


def texts(v: Any) -> str | None:
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return None
    return f"expected a list of strings, found {v!r}"


def optional(check: Check) -> Check:
    """`check`, with null (an empty entry) allowed too."""
    return lambda v: None if v is None else check(v)


def mapping(v: Any) -> str | None:
    return None if v is None or isinstance(v, Mapping) else f"expected a mapping, found {v!r}"


def split_images(v: Any) -> str | None:
    """`images`: null (not declared), a count (of the test split) or {split: count}."""
    if v is None or _is_count(v):
        return None
    if isinstance(v, Mapping) and all(isinstance(k, str) and _is_count(n) for k, n in v.items()):
        return None
    return f"expected a mapping of split -> positive image count (or one count for the test split), found {v!r}"


def data_layout(v: Any) -> str | None:
    if isinstance(v, str) and v in LAYOUTS:
        return None
    near = nearest(str(v), LAYOUTS)
    return (f"unknown layout {v!r}; valid: {', '.join(LAYOUTS)}" + (f"; did you mean '{near}'?" if near else ""))


ADAPTER = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def adapter_path(v: Any) -> str | None:
    if isinstance(v, str) and ADAPTER.fullmatch(v):
        return None
    return (f"adapter {v!r} is not 'package.module:Class' (a dotted module path, a colon, the class name; e.g. "
            "\"methods.esa.adapter:ESAAdapter\")")


def recipes(v: Any) -> str | None:
    if v is None or isinstance(v, Mapping):
        return None
    return f"expected a mapping of dataset (or default) -> {{recipe key: value}}, found {v!r}"


def recipe(v: Any) -> str | None:
    if v is None or (isinstance(v, Mapping) and all(isinstance(k, str) for k in v)):
        return None
    return f"expected a mapping of recipe key -> value, found {v!r}"


def any_value(v: Any) -> str | None:
    return None


def reported_value(key: str, v: Any) -> str | None:
    """A reported number: null, or a finite percentage (a sum of six for an rsum)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"value of '{key}' is {v!r}, expected a number or null"
    if not math.isfinite(v):
        return f"value of '{key}' is {v!r}, expected a finite number (or null where the source prints none)"
    top = 600.0 if any(part.startswith("rsum") for part in key.split(".")) else 100.0
    if not -100.0 <= v <= top:
        return f"value of '{key}' is {v!r}, outside the range of a percentage (-100..{top:g})"
    return None


# ---- sections and keys (other sections, e.g. protocols:, go here) ---------------------------------------------

TOP_SECTIONS: dict[str, Key] = {
    "datasets": Key(mapping),
    "methods": Key(mapping),
    "reported": Key(lambda v: None if v is None or isinstance(v, list) else f"expected a list of rows, found {v!r}"),
    "checkpoints": Key(mapping),  # amendments of checkpoint entries (sizes, hashes, mirrors): read by fetch
    "protocols": Key(mapping),  # protocols of one's own: name -> {object: "module:Obj"} (spec/protocol_plugins.py)
}

EXTENSION_KEYS: dict[str, Key] = {"add_protocols": Key(names, required=True)}  # datasets.<name> of another file

DATASET_KEYS: dict[str, Key] = {  # keys of datasets.<name> (e.g. add_protocols goes here)
    "description": Key(text),
    "split": Key(text, required=True),
    "validation_split": Key(text),
    "protocols": Key(names, required=True),
    "images": Key(split_images),
    "captions_per_image": Key(positive_int),
    "layout": Key(data_layout),
    "feature_dim": Key(optional_positive_int),
}

METHOD_KEYS: dict[str, Key] = {
    "title": Key(text, required=True),
    "venue": Key(text),
    "code": Key(text),
    "adapter": Key(adapter_path, required=True),
    "notes": Key(optional(texts)),
    "recipe_keys": Key(mapping),
    "recipes": Key(recipes),
    "settings": Key(mapping),
    "variants": Key(lambda v: None if isinstance(v, Mapping) else f"expected a mapping of variant -> definition, "
                    f"found {v!r}", required=True),
    "baseline": Key(flag),
}

VARIANT_KEYS: dict[str, Key] = {
    "description": Key(text),
    "options": Key(mapping),
    "members": Key(optional(names)),
    "checkpoints": Key(mapping),
    "recipes": Key(recipes),
}

CHECKPOINT_KEYS: dict[str, Key] = {
    "urls": Key(names),
    "url": Key(text),
    "files": Key(lambda v: None if v is None or isinstance(v, list) else f"expected a list of files, found {v!r}"),
    "archive": Key(optional_text),
    "note": Key(optional_text),
}

CHECKPOINT_FILE_KEYS: dict[str, Key] = {
    "name": Key(text, required=True),
    "member": Key(optional_text),
    "size": Key(any_value),  # checked (a byte count) by parse_checkpoint_file
    "sha256": Key(any_value),  # checked (64 hex digits) by parse_checkpoint_file
    "note": Key(optional_text),
}

REPORTED_KEYS: dict[str, Key] = {
    "method": Key(text, required=True),
    "variant": Key(text, required=True),
    "dataset": Key(text, required=True),
    "protocol": Key(text, required=True),
    "source": Key(text, required=True),
    "values": Key(lambda v: None if isinstance(v, Mapping) and v else "'values' must be a non-empty mapping of "
                  f"metric -> number, found {v!r}", required=True),
    "setting": Key(mapping),
    "table": Key(text),
    "label": Key(text),
    "note": Key(text),
    "decimals": Key(any_value),  # an integer or metric -> integer: checked by the row parser
    "derived": Key(any_value),  # metrics the registry computed: checked by the row parser
    "table_note": Key(text),
}


# ---- walking a document ----------------------------------------------------------------------------------

def fail(container: Any, key: Any, source: str, path: str, problem: str) -> RegistryError:
    """A one-line error at `key` of `container` (its file and line when it was read from a file)."""
    return RegistryError(f"{location(container, key, source)}: {path}: {problem}")


def check_mapping(raw: Any, keys: Mapping[str, Key], source: str, path: str, *, parent: Any = None,
                  name: Any = None, hint: str = "") -> Mapping[str, Any]:
    """`raw` as a mapping whose keys are all in `keys` (required ones present) and whose values pass their
    checks; errors name the file, the line, the path and the nearest valid key."""
    if not isinstance(raw, Mapping):
        raise fail(parent, name, source, path, f"expected a mapping, found {raw!r}")
    for key, value in raw.items():
        if key not in keys:
            near = nearest(str(key), keys)
            suggestion = f"; did you mean '{near}'?" if near else f"; valid: {', '.join(keys)}"
            raise fail(raw, key, source, path, f"unknown key {str(key)!r}{suggestion}{hint}")
        problem = keys[key].check(value)
        if problem is not None:
            raise fail(raw, key, source, f"{path}.{key}", problem)
    for key, spec in keys.items():
        if spec.required and key not in raw:
            raise fail(raw, None, source, path, f"missing required field '{key}'")
    return raw


def _entries(raw: Any) -> list[tuple[Any, Any]]:
    return list(raw.items()) if isinstance(raw, Mapping) else []


def _check_recipes(owner: Mapping[str, Any], source: str, path: str) -> None:
    section = owner.get("recipes") or {}
    for name, body in section.items():
        if not isinstance(name, str):
            raise fail(section, name, source, f"{path}.recipes", f"expected a dataset name, found {name!r}")
        problem = recipe(body)
        if problem is not None:
            raise fail(section, name, source, f"{path}.recipes.{name}", problem)


def check_document(doc: Mapping[str, Any], source: str, internal: tuple[str, ...] = ()) -> None:
    """Every section of a merged registry document against the tables above (RegistryError at the first problem);
    `internal` names keys the merge itself adds (not the user's)."""
    check_mapping(doc, {**TOP_SECTIONS, **{k: Key(lambda v: None) for k in internal}}, source, "registry")
    datasets = doc.get("datasets") or {}
    for name, body in _entries(datasets):
        if isinstance(body, Mapping) and set(body) == {"add_protocols"}:  # extends a dataset of another file
            check_mapping(body, EXTENSION_KEYS, source, f"datasets.{name}", parent=datasets, name=name)
            continue
        check_mapping(body, DATASET_KEYS, source, f"datasets.{name}", parent=datasets, name=name)
    methods = doc.get("methods") or {}
    for name, body in _entries(methods):
        where = f"methods.{name}"
        body = check_mapping(body, METHOD_KEYS, source, where, parent=methods, name=name)
        _check_recipes(body, source, where)
        variants = body["variants"]
        for vname, variant in _entries(variants):
            if variant is None:
                continue
            vwhere = f"{where}.variants.{vname}"
            check_mapping(variant, VARIANT_KEYS, source, vwhere, parent=variants, name=vname)
            _check_recipes(variant, source, vwhere)
            cks = variant.get("checkpoints") or {}
            for ds, ck in _entries(cks):
                check_mapping(ck, CHECKPOINT_KEYS, source, f"{vwhere}.checkpoints.{ds}", parent=cks, name=ds)
                for i, f in enumerate(ck.get("files") or []):
                    if not isinstance(f, str):
                        check_mapping(f, CHECKPOINT_FILE_KEYS, source, f"{vwhere}.checkpoints.{ds}.files[{i}]",
                                      parent=ck, name="files")
    rows = doc.get("reported") or []
    for i, row in enumerate(rows):
        where = f"reported[{i}]" if not isinstance(row, Mapping) or "method" not in row else \
            f"reported[{i}] ({row.get('method')}/{row.get('variant')})"
        check_mapping(row, REPORTED_KEYS, source, where, parent=doc, name="reported",
                      hint=" (quote a label or note that holds a comma)")
        values = row["values"]
        for key, value in values.items():
            problem = reported_value(str(key), value)
            if problem is not None:
                raise fail(values, key, source, f"{where}.values", problem)
