"""YAML config files, read one way for every kind (train, tune with its ``space:``, serve, table specs): each
error names the file, and where known the section, the line and the key.

``ConfigFile`` parses a file once, keeping each key's line, hands out its sections and builds the config
dataclasses from them; a value a config refuses comes back as
``configs/train.yaml [train] line 7: learning_rate: must be a number in (0, 1], got 2``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence, Type, TypeVar

import yaml

from convfm.errors import ConfigError


class FromDict(Protocol):
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "") -> Any: ...


T = TypeVar("T", bound=FromDict)


class ConfigFile:
    """One YAML file whose top level is a mapping of sections (or, for a table spec, of fields)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._root, document = _parse(self.path)
        if not isinstance(document, dict):
            raise ConfigError(f"{self.path}: top level must be a mapping, got {type(document).__name__}")
        self.document: dict[str, Any] = document

    def check_sections(self, allowed: Iterable[str]) -> None:
        """Every top-level key must be a known section: a typo (``trian:``) would otherwise be ignored and
        every value in it silently replaced by defaults."""
        allowed = list(allowed)
        unknown = sorted((str(key) for key in self.document if key not in allowed))
        if unknown:
            raise ConfigError(f"{self.where(field=unknown[0])}: unknown section(s) {unknown}; allowed: {allowed}",
                              field=unknown[0])

    def section(self, name: str) -> dict[str, Any]:
        """The ``name:`` mapping; {} when it is absent or empty."""
        values = self.document.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{self.where(field=name)}: section {name!r} must be a mapping, got "
                              f"{type(values).__name__}", field=name)
        return values

    def load(self, cls: Type[T], section: str) -> T:
        """``cls`` from the ``section:`` mapping; a missing section means all defaults."""
        return self.build(cls, self.section(section), section)

    def build(self, cls: Type[T], values: Mapping[str, Any], section: Optional[str] = None, *,
              lifted: Sequence[str] = (), overrides: Optional[Mapping[str, Any]] = None,
              make: Optional[Callable[[Mapping[str, Any]], T]] = None) -> T:
        """``cls`` from ``values`` read from this file (from ``section``, or the top level when None), with
        ``overrides`` (command-line flags) on top; ``make`` replaces ``cls.from_dict``.

        ``lifted`` names top-level sections the caller merged into ``values`` as fields of the same name
        (tune's ``space:``), so their keys are looked up where they are written."""
        overrides = dict(overrides or {})
        try:
            return (make or cls.from_dict)({**values, **overrides})
        except ConfigError as exc:
            top = (exc.field or "").split(".")[0]
            where = "command line" if top in overrides else self.where(section, exc.field, lifted)
            raise ConfigError(f"{where}: {exc}", field=exc.field) from None

    def where(self, section: Optional[str] = None, field: Optional[str] = None, lifted: Sequence[str] = ()) -> str:
        """``path [section] line N`` for the key ``field`` (dotted for nested keys) of ``section``."""
        keys = field.split(".") if field else []
        if keys and keys[0] in lifted:
            section, keys = keys[0], keys[1:]
        path = ([section] if section else []) + keys
        line = self.line(path, at_least=len(path) if not keys else len(path) - len(keys) + 1)
        return f"{self.path}" + (f" [{section}]" if section else "") + (f" line {line}" if line else "")

    def line(self, keys: Sequence[str], at_least: int = 1) -> Optional[int]:
        """1-based line of the deepest of ``keys`` (a path of nested keys) found, once ``at_least`` of them are."""
        node, line, found = self._root, None, 0
        for key in keys:
            if not isinstance(node, yaml.MappingNode):
                break
            match = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)),
                         None)
            if match is None:
                break
            line, node, found = match[0].start_mark.line + 1, match[1], found + 1
        return line if found >= at_least else None


def _parse(path: Path) -> tuple[Optional[yaml.Node], Any]:
    """(node tree, document) from one parse; ConfigError naming the file (and line) when it cannot be read."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_problem(exc)}") from None
    finally:
        loader.dispose()


def _problem(exc: yaml.YAMLError) -> str:
    """One line (PyYAML's own message spans several): the problem and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
