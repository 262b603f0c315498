"""``metadata.managedFields`` as kube-apiserver keeps it for Update operations.

Every write names a field manager: the ``fieldManager`` query parameter, else the part of
the User-Agent before the first ``/`` (so ``kubectl scale``, which sends none, is
``kubectl``; the Python client is ``OpenAPI-Generator``). The fields a write *changed* (or
created) become that manager's, in one entry per (manager, operation, subresource), and
are taken away from every other entry; fields it removed belong to nobody; an entry left
owning nothing is dropped. Fields are written as fieldsV1 trees: ``f:<name>`` for map keys,
``k:{"name":"app"}`` for items of lists with a merge key (containers, env, ports,
conditions, ...), with ``.`` marking the item itself, and other lists owned whole.

Server-side apply (``application/apply-patch+yaml``) is not emulated: nothing in a rollout
sends it, and its conflict rules are a subject of their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from phasegate.rehearsal.k8s_patch import MERGE_KEYS

Obj = dict[str, Any]
Path = tuple[str, ...]

# Identity and bookkeeping: the server's, owned by nobody.
_UNMANAGED_METADATA = frozenset({"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                                 "managedFields", "selfLink", "deletionTimestamp"})
_ITEM = "."


def manager_from(field_manager: str | None, user_agent: str | None) -> str:
    """The manager name a request writes as, by the apiserver's rule."""
    if field_manager:
        return field_manager
    return (user_agent or "").split("/", 1)[0][:128] or "unknown"


def _item_key(field: str, item: Obj) -> str | None:
    if field == "ports":
        key = "port" if "port" in item and "containerPort" not in item else "containerPort"
        fields = {key: item.get(key), "protocol": item.get("protocol", "TCP")}
    elif field in MERGE_KEYS and MERGE_KEYS[field] in item:
        fields = {MERGE_KEYS[field]: item[MERGE_KEYS[field]]}
    else:
        return None
    return "k:" + json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _leaves(value: Any, prefix: Path, field: str) -> Iterator[tuple[Path, Any]]:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from _leaves(sub, (*prefix, f"f:{key}"), key)
        return
    if isinstance(value, list) and value and all(isinstance(i, dict) for i in value):
        keys = [_item_key(field, i) for i in value]
        if all(keys):
            for key, item in zip(keys, value, strict=True):
                assert key is not None
                yield (*prefix, key, _ITEM), True
                yield from _leaves(item, (*prefix, key), "")
            return
    yield prefix, value


def leaves(obj: Obj, subresource: str = "") -> dict[Path, Any]:
    """Every managed leaf of ``obj`` → its value (the status subresource manages only status)."""
    found: dict[Path, Any] = {}
    for key, value in obj.items():
        if key in ("apiVersion", "kind") or (key == "status") != (subresource == "status"):
            continue
        if key == "metadata":
            value = {k: v for k, v in value.items() if k not in _UNMANAGED_METADATA}
        found.update(_leaves(value, (f"f:{key}",), key))
    return found


def _paths(tree: Any, prefix: Path = ()) -> Iterator[Path]:
    if not isinstance(tree, dict) or not tree:
        yield prefix
        return
    for key, sub in tree.items():
        yield from _paths(sub, (*prefix, key))


def _tree(paths: set[Path]) -> Obj:
    root: Obj = {}
    for path in sorted(paths):
        node = root
        for step in path:
            node = node.setdefault(step, {})
    return root


def record(old: Obj | None, new: Obj, *, manager: str, api_version: str, now: str, subresource: str = "") -> None:
    """Set ``new``'s managedFields after a write of ``old`` → ``new`` by ``manager``."""
    before = leaves(old, subresource) if old is not None else {}
    after = leaves(new, subresource)
    changed = {p for p, v in after.items() if p not in before or before[p] != v}
    gone = set(before) - set(after)
    if old is not None and not changed and not gone:
        new["metadata"]["managedFields"] = (old["metadata"].get("managedFields") or [])
        return
    entries: list[Obj] = []
    mine: Obj | None = None
    for entry in (old or {}).get("metadata", {}).get("managedFields") or []:
        owned = set(_paths(entry.get("fieldsV1") or {})) - changed - gone
        same = (entry.get("manager"), entry.get("operation"), entry.get("subresource", "")) == \
            (manager, "Update", subresource)
        if same:
            owned |= changed
        if owned:
            entries.append({**entry, "fieldsV1": _tree(owned), **({"time": now} if same else {})})
            if same:
                mine = entries[-1]
    if mine is None and changed:
        entry = {"manager": manager, "operation": "Update", "apiVersion": api_version, "time": now,
                 "fieldsType": "FieldsV1", "fieldsV1": _tree(changed)}
        if subresource:
            entry["subresource"] = subresource
        entries.append(entry)
    new["metadata"]["managedFields"] = entries
