"""YAML loading that remembers where every value came from.

pydantic reports errors by field path (``phases.1.triggers.0.threshold``); people fix
files by line. We load with ruamel's round-trip loader, which keeps line numbers on every
mapping and sequence, convert to plain Python, and keep a path → line index so that any
validation error can be printed as ``FILE:LINE: path: message``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

PathKey = tuple[str | int, ...]


@dataclass
class Source:
    """Plain data loaded from YAML, plus the line (1-based) of each path in it."""

    name: str
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: PathKey) -> int:
        """Line of the deepest prefix of ``path`` we know (a missing field points at its parent)."""
        for n in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:n]))
            if line is not None:
                return line
        return 1


class SourceError(Exception):
    """The file could not be read or parsed as YAML; ``line`` is 1-based."""

    def __init__(self, name: str, line: int, message: str) -> None:
        super().__init__(f"{name}:{line}: {message}")
        self.name, self.line, self.message = name, line, message


def _plain(node: Any, path: PathKey, lines: dict[PathKey, int]) -> Any:
    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            child = (*path, str(key))
            try:
                lines[child] = node.lc.key(key)[0] + 1
            except (KeyError, TypeError, AttributeError):
                lines[child] = lines.get(path, 1)
            out[str(key)] = _plain(value, child, lines)
        return out
    if isinstance(node, CommentedSeq):
        out_list = []
        for i, value in enumerate(node):
            child = (*path, i)
            try:
                lines[child] = node.lc.item(i)[0] + 1
            except (KeyError, TypeError, AttributeError, IndexError):
                lines[child] = lines.get(path, 1)
            out_list.append(_plain(value, child, lines))
        return out_list
    if isinstance(node, str):
        return str(node)
    return node


def load_text(text: str, name: str = "<plan>") -> Source:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        node = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise SourceError(name, line, f"not valid YAML: {problem}") from None
    except YAMLError as exc:
        raise SourceError(name, 1, f"not valid YAML: {exc}") from None
    lines: dict[PathKey, int] = {(): 1}
    return Source(name, _plain(node, (), lines), lines)


def load_file(path: str | Path) -> Source:
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise SourceError(name, 1, "no such file")
    if p.is_dir():
        raise SourceError(name, 1, "is a directory, expected a YAML plan file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SourceError(name, 1, "not UTF-8 text") from None
    except OSError as exc:
        raise SourceError(name, 1, f"cannot read: {exc.strerror}") from None
    return load_text(text, name)
