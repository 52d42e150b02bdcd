"""docs/DESIGN.md names only what exists, so it cannot drift silently from the code.

The names are read from the document itself (its Layout section states the rules), so the test keeps working
when modules move: update the document and the test follows.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path
from types import ModuleType
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "DESIGN.md"
PACKAGES = {p.parent.name for p in ROOT.glob("*/__init__.py")}
FILE_SUFFIXES = {"csv", "json", "md", "npz", "png", "pt", "py", "yaml"}  # `metrics.json` is a file, not a name
SPAN = re.compile(r"`([^`]+)`")
NAME = re.compile(r"(?P<chain>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?P<call>\(.*\))?")
ITEM = re.compile(r"(?P<indent> *)- `(?P<path>[\w.-]+/?)`")


@dataclasses.dataclass
class Item:
    """One Layout entry: a file or folder (path from the repository root) and the text of its line(s)."""

    path: str
    text: str

    @property
    def module(self) -> Optional[str]:
        """The importable module this entry is: a .py file, or a folder with an ``__init__.py``."""
        if self.path.endswith(".py"):
            return self.path[:-3].replace("/", ".")
        if self.path.endswith("/") and (ROOT / self.path / "__init__.py").is_file():
            return self.path.rstrip("/").replace("/", ".")
        return None


def split_layout(doc: str) -> tuple[str, str]:
    """(the ``## Layout`` section, the rest of the document)."""
    head, tail = doc.split("## Layout", 1)
    section, _, rest = tail.partition("\n## ")
    return section, head + rest


def layout(doc: str) -> list[Item]:
    """The ``## Layout`` list: nesting (by indentation) gives each entry's folder; indented lines continue one.
    Text before the first entry (the rules, with their placeholder names) is not an entry."""
    items: list[Item] = []
    folders: list[tuple[int, str]] = []  # (indent, path) of the folders enclosing the current line
    for line in split_layout(doc)[0].splitlines():
        match = ITEM.match(line)
        if match is None:
            if items and line.startswith(" "):
                items[-1].text += " " + line.strip()
            continue
        indent = len(match["indent"])
        while folders and folders[-1][0] >= indent:
            folders.pop()
        path = (folders[-1][1] if folders else "") + match["path"]
        if path.endswith("/"):
            folders.append((indent, path))
        items.append(Item(path, line[match.end():]))
    return items


def _has(obj: object, attrs: list[str]) -> bool:
    if obj is None:
        return False
    for attr in attrs:
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return True


def _module(name: str) -> Optional[ModuleType]:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return None


def _import_and_get(parts: list[str]) -> bool:
    """``package.module.Name.attr``: import the longest module prefix, then look up the rest."""
    for end in range(len(parts), 0, -1):
        module = _module(".".join(parts[:end]))
        if module is not None:
            return _has(module, parts[end:])
    return False


def name_errors(doc: str) -> list[tuple[str, str]]:
    """(span, where it was looked for) of every backticked name or path of the document that does not exist."""
    items = layout(doc)
    modules = [item.module for item in items if item.module]
    by_basename: dict[str, list[str]] = {}
    for module in modules:
        by_basename.setdefault(module.rsplit(".", 1)[-1], []).append(module)
    lines = [(item.module, item.text) for item in items] + [(None, split_layout(doc)[1])]
    errors = []
    for home, text in lines:
        for span in SPAN.findall(text):
            where = _span_error(span, home, modules, by_basename)
            if where:
                errors.append((span, where))
    return errors


def _span_error(span: str, home: Optional[str], modules: list[str], by_basename: dict[str, list[str]]) -> str:
    """Where ``span`` was looked for and not found; "" when it exists or is not a name."""
    if "/" in span:
        return "" if not span.endswith(".py") or (ROOT / span).is_file() else "the repository"
    match = NAME.fullmatch(span)
    if match is None:
        return ""
    parts = match["chain"].split(".")
    if parts[0] in PACKAGES:
        return "" if _import_and_get(parts) else "import"
    if len(parts) > 1 and parts[0] in by_basename and parts[-1] not in FILE_SUFFIXES:
        candidates, parts = by_basename[parts[0]], parts[1:]
    elif match["call"] or any(len(p) > 1 and p[0].isupper() for p in parts):  # CamelCase, UPPER, function()
        candidates = [home] if home else modules
    else:
        return ""  # a column, a value, a command line: not a Python name
    if any(_has(_module(module), parts) for module in candidates):
        return ""
    return ", ".join(candidates) or "no module: the Layout lists none"


def missing_paths(doc: str) -> list[str]:
    return [item.path for item in layout(doc) if not (ROOT / item.path).exists()]


def unlisted_modules(doc: str) -> list[str]:
    """Modules missing from a Layout folder that lists some of its modules (so the list is complete)."""
    listed = {item.path for item in layout(doc)}
    folders = {path.rsplit("/", 1)[0] + "/" for path in listed if path.endswith(".py")}
    return sorted(
        str(path.relative_to(ROOT)) for folder in folders for path in (ROOT / folder).glob("*.py")
        if path.name != "__init__.py" and str(path.relative_to(ROOT)) not in listed
    )


def test_every_listed_file_and_folder_exists() -> None:
    assert layout(DESIGN.read_text()), "docs/DESIGN.md: the Layout section has no '- `path`: ...' entries"
    missing = missing_paths(DESIGN.read_text())
    assert not missing, f"docs/DESIGN.md lists paths that do not exist: {missing}"


def test_every_module_of_a_listed_folder_has_a_line() -> None:
    unlisted = unlisted_modules(DESIGN.read_text())
    assert not unlisted, f"docs/DESIGN.md Layout: add a line for {unlisted}"


def test_every_name_exists() -> None:
    errors = name_errors(DESIGN.read_text())
    assert not errors, "docs/DESIGN.md names what the code does not have:\n" + "\n".join(
        f"  `{span}` (looked in {where})" for span, where in errors)


def test_the_checks_catch_the_drift_they_were_written_for() -> None:
    drifted = """## Layout
- `convfm/`: the library
  - `config.py`: `ModelConfig`, `TableSpec`, `load_yaml_config()`
  - `data/`: data
    - `schema.py`: canonical columns; `EVENTS`
  - `model/`: the model
    - `network.py`: `ConvFM`, `ConvFMJobRecommender`
  - `serving.py`: job metadata
## Model
`ConvFM` (`convfm/model/network.py`, `network.ConvFM`), not `network.NoSuchPart`, `convfm.evaluation.metrics.evaluation_report()`,
`NoSuchClass(x)`, `no_such_function()` or `convfm/no_such_module.py`; `config.yaml` and `column` are no names.
"""
    assert layout(drifted)[1] == Item("convfm/config.py", ": `ModelConfig`, `TableSpec`, `load_yaml_config()`")
    assert {span for span, _ in name_errors(drifted)} == {
        "TableSpec", "EVENTS", "ConvFMJobRecommender", "network.NoSuchPart", "convfm.evaluation.metrics.evaluation_report()",
        "NoSuchClass(x)", "no_such_function()", "convfm/no_such_module.py",
    }
    assert missing_paths(drifted) == ["convfm/serving.py"]
    assert "convfm/data/loading.py" in unlisted_modules(drifted) and "convfm/model/network.py" not in unlisted_modules(drifted)
