"""A YAML loader for registry files that remembers where each mapping key was written and refuses a key given
twice in one mapping (plain YAML keeps the last one silently).

Mappings load as `LineDict`s: ordinary dicts that also carry their file and the line of each key, so schema
errors can say `registry.yaml:123: datasets.mine: unknown key ...`. Documents built in code (plain dicts) are
accepted everywhere a LineDict is; they just have no lines to show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from yaml.representer import SafeRepresenter

from harness.spec.errors import RegistryError


class DuplicateKeyError(RegistryError):
    """A key appears twice in one YAML mapping."""


class LineDict(dict):
    """A dict loaded from a YAML file: `file`, the mapping's own `line` and each key's line (1-based)."""

    file: str = ""
    line: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}
        self.key_files: dict[Any, str] = {}  # where a key came from another file (a merged section)

    def derive(self, items: Mapping[Any, Any]) -> LineDict:
        """A new LineDict holding `items`, keeping this one's file and the lines of the keys it shares."""
        out = LineDict(items)
        out.file, out.line = self.file, self.line
        out.key_lines = {k: self.key_lines[k] for k in items if k in self.key_lines}
        out.key_files = {k: self.key_files[k] for k in items if k in self.key_files}
        return out

    def take(self, key: Any, value: Any, source: Any) -> None:
        """Set `key` to `value`, remembering the file and line `key` had in the mapping `source`."""
        self[key] = value
        if isinstance(source, LineDict) and source.file:
            self.key_files[key] = source.key_files.get(key, source.file)
            if key in source.key_lines:
                self.key_lines[key] = source.key_lines[key]


def location(mapping: Any, key: Any = None, default: str = "") -> str:
    """`file:line` of `key` in `mapping` (of the mapping itself when `key` is None or has no line), or `default`
    when the mapping was not loaded from a file."""
    if not isinstance(mapping, LineDict):
        return default
    if key is not None and key in mapping.key_files:
        return f"{mapping.key_files[key]}:{mapping.key_lines[key]}" if key in mapping.key_lines \
            else mapping.key_files[key]
    if not mapping.file:
        return default
    line = mapping.key_lines.get(key, mapping.line) if key is not None else mapping.line
    return f"{mapping.file}:{line}" if line else mapping.file


class _LineLoader(yaml.SafeLoader):
    file = ""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> Any:
    data = LineDict()
    data.file, data.line = loader.file, node.start_mark.line + 1
    yield data
    explicit = len(node.value)
    loader.flatten_mapping(node)  # `<<: *anchor` merges come first; explicit keys may override them
    merged = len(node.value) - explicit
    first: dict[Any, int] = {}
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=False)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    "found an unhashable key", key_node.start_mark) from None
        line = key_node.start_mark.line + 1
        if i >= merged and key in first:
            raise DuplicateKeyError(f"{loader.file}:{line}: key {key!r} is given twice in one mapping (lines "
                                    f"{first[key]} and {line}); YAML would keep the last silently: keep one")
        if i >= merged:
            first[key] = line
        data[key] = loader.construct_object(value_node, deep=False)
        data.key_lines[key] = line


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
# documents read with line numbers can be written back (fetch --record rewrites a user file)
yaml.SafeDumper.add_representer(LineDict, SafeRepresenter.represent_dict)


def load_yaml(text: str, file: str) -> Any:
    """The YAML document in `text` (mappings as LineDicts naming `file`). Raises yaml.YAMLError for syntax
    errors and DuplicateKeyError (one line, with both lines) for a key given twice."""
    loader = _LineLoader(text)
    loader.file = file
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def plain(value: Any) -> Any:
    """`value` with every LineDict (at any depth) a plain dict and every list a plain list: what leaves the
    registry (recipes, options) and may be written into checkpoints, which a safe loader reads back."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value) if isinstance(value, tuple) else [plain(v) for v in value]
    return value
