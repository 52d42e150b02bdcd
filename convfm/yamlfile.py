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
    except OSError as exc:  # permissions, a dangling mount...: one line, not a traceback
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None) or {}
    except _NodeError as exc:
        keys = _key_path(root, exc.node) or []
        section = f" [{keys.pop(0)}]" if len(keys) > 1 else ""
        key = f" {'.'.join(keys)}:" if keys else ""
        raise ConfigError(f"{path}{section} line {exc.node.start_mark.line + 1}:{key} {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_problem(exc)}") from None
    finally:
        loader.dispose()


class _NodeError(yaml.constructor.ConstructorError):
    """A value YAML parsed but cannot build, with its node, so the message can name the key it belongs to."""

    def __init__(self, node: yaml.Node, problem: str) -> None:
        super().__init__(None, None, problem, node.start_mark)
        self.node = node


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML would keep the last one silently, and
    errors would name the first one's line) and turns an impossible date into an error naming its key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if key.value in seen:
                raise _NodeError(key, f"key written twice, at lines {seen[key.value]} and {line} (YAML would keep "
                                      f"only the last): keep one")
            seen[key.value] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:  # 2024-13-45 has the shape of a date, so PyYAML builds one and fails
            raise _NodeError(node, f"not a valid date: {node.value} ({exc})") from None


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def _key_path(node: Optional[yaml.Node], target: yaml.Node, keys: tuple[str, ...] = ()) -> Optional[list[str]]:
    """The keys leading to ``target`` (a key or a value node) in the tree under ``node``; None when absent."""
    if node is target:
        return list(keys)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = keys + (str(key.value),) if isinstance(key, yaml.ScalarNode) else keys
            if key is target:
                return list(path)
            found = _key_path(value, target, path)
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _key_path(item, target, keys)
            if found is not None:
                return found
    return None


def _problem(exc: yaml.YAMLError) -> str:
    """One line (PyYAML's own message spans several): the problem and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
