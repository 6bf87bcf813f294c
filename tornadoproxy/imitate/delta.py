"""The v1 delta framing's state: JSON documents keyed by `c`, changed by path operations.

Each delta `{"p","o","v","c"}` (every key optional) applies operation `o` at JSON-pointer `p` of
document `c` (the current one when `c` is absent). A top-level delta without `p` or `o` reuses the
last top-level one (sticky); `v` is never inherited; installing a document resets nothing. `o`:
`add` / `replace` set the value at `p`; `append` concatenates a string, extends a list with a list
(pushes any other value) or merges an object into an object; `remove` deletes; `truncate` cuts a
string or list to length `v`; `patch` applies the operations listed in `v` (paths from the document
root), which leave the sticky `p` and `o` alone. An operation that cannot apply (a path into
nothing, a type it does not fit) is skipped and counted, never guessed at.
"""

from __future__ import annotations

from typing import Any

_INSTALL = ("add", "replace")


class _Inapplicable(Exception):
    pass


class DeltaDocuments:
    """Documents by `c`, the current `c`, and the sticky top-level `p` and `o`."""

    def __init__(self) -> None:
        self.documents: dict[int, Any] = {}
        self.current = 0
        self.skipped = 0  # operations that could not apply: for a log line, not an error
        self._path: str | None = None
        self._op: str | None = None

    def apply(self, delta: dict[str, Any]) -> int | None:
        """Apply one top-level delta; the `c` of the document it changed, or None if skipped."""
        if "c" in delta:
            if type(delta["c"]) is not int:
                self.skipped += 1
                return None
            self.current = delta["c"]
        key = self.current
        if "p" not in delta and "o" not in delta and key not in self.documents:
            # The short form of installing a document: {"v": {...}, "c": N}.
            if isinstance(delta.get("v"), dict):
                self.documents[key] = delta["v"]
                return key
        path = delta.get("p", self._path)
        op = delta.get("o", self._op)
        self._path, self._op = path, op
        if not isinstance(path, str) or not isinstance(op, str) or "v" not in delta and op != "remove":
            self.skipped += 1
            return None
        if op == "patch":
            return key if self._patch(key, delta["v"]) else None
        return key if self._apply_counted(key, path, op, delta.get("v")) else None

    def _patch(self, key: int, operations: object) -> bool:
        if not isinstance(operations, list):
            self.skipped += 1
            return False
        changed = False
        for operation in operations:
            if not isinstance(operation, dict) or not isinstance(operation.get("o"), str):
                self.skipped += 1
                continue
            path = operation.get("p", "")
            if operation["o"] == "patch":
                changed = self._patch(key, operation.get("v")) or changed
            elif isinstance(path, str):
                changed = self._apply_counted(key, path, operation["o"], operation.get("v")) or changed
            else:
                self.skipped += 1
        return changed

    def _apply_counted(self, key: int, path: str, op: str, value: Any) -> bool:
        try:
            self._apply(key, path, op, value)
        except _Inapplicable:
            self.skipped += 1
            return False
        return True

    def _apply(self, key: int, path: str, op: str, value: Any) -> None:
        tokens = _tokens(path)
        if not tokens:
            self._apply_root(key, op, value)
            return
        if key not in self.documents:
            raise _Inapplicable
        parent: Any = self.documents[key]
        for token in tokens[:-1]:
            parent = _child(parent, token)
        _apply_at(parent, tokens[-1], op, value)

    def _apply_root(self, key: int, op: str, value: Any) -> None:
        if op in _INSTALL:
            self.documents[key] = value
        elif op == "remove":
            if self.documents.pop(key, _MISSING) is _MISSING:
                raise _Inapplicable
        elif key in self.documents:
            self.documents[key] = _combined(self.documents[key], op, value)
        else:
            raise _Inapplicable


_MISSING = object()


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _Inapplicable
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not (token.isascii() and token.isdigit()) or (len(token) > 1 and token[0] == "0"):
        raise _Inapplicable
    index = int(token)
    if index > len(container) or (index == len(container) and not allow_end):
        raise _Inapplicable
    return index


def _child(container: Any, token: str) -> Any:
    if isinstance(container, dict) and token in container:
        return container[token]
    if isinstance(container, list):
        return container[_index(container, token, allow_end=False)]
    raise _Inapplicable


def _apply_at(parent: Any, token: str, op: str, value: Any) -> None:
    if isinstance(parent, dict):
        _apply_in_object(parent, token, op, value)
    elif isinstance(parent, list):
        _apply_in_list(parent, _index(parent, token, allow_end=op != "remove"), op, value)
    else:
        raise _Inapplicable


def _apply_in_object(parent: dict[str, Any], key: str, op: str, value: Any) -> None:
    if op == "remove":
        if parent.pop(key, _MISSING) is _MISSING:
            raise _Inapplicable
    elif op in _INSTALL or (op == "append" and key not in parent):
        parent[key] = value
    elif key in parent:
        parent[key] = _combined(parent[key], op, value)
    else:
        raise _Inapplicable


def _apply_in_list(parent: list[Any], index: int, op: str, value: Any) -> None:
    at_end = index == len(parent)
    if op == "remove":
        del parent[index]
    elif op in _INSTALL or (op == "append" and at_end):
        if at_end:
            parent.append(value)
        else:
            parent[index] = value
    elif not at_end:
        parent[index] = _combined(parent[index], op, value)
    else:
        raise _Inapplicable


def _combined(current: Any, op: str, value: Any) -> Any:
    """`current` after `append` or `truncate` with `value` (lists and objects change in place)."""
    if op == "append":
        if isinstance(current, str) and isinstance(value, str):
            return current + value
        if isinstance(current, list):
            if isinstance(value, list):
                current.extend(value)
            else:
                current.append(value)
            return current
        if isinstance(current, dict) and isinstance(value, dict):
            current.update(value)
            return current
    elif op == "truncate" and type(value) is int and value >= 0:
        if isinstance(current, (str, list)):
            return current[:value]
    raise _Inapplicable
