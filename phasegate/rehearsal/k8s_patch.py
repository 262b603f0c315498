"""The three PATCH flavours kube-apiserver accepts, applied to plain JSON dicts.

* Strategic merge patch (the default of ``kubectl patch``, ``set image``, ``set env``): maps
  merge recursively, lists of objects merge by their Kubernetes *merge key* (containers, env
  and volumes by ``name``, container ports by ``containerPort``, service ports by ``port``),
  other lists are replaced. Directives: ``$patch: delete|replace|merge``,
  ``$setElementOrder/<field>`` (kubectl's two-way patches always send it) and
  ``$deleteFromPrimitiveList/<field>``; ``$retainKeys`` is accepted and ignored.
  Real Kubernetes looks merge keys up in the OpenAPI schema by path; we key them by field
  name, which gives the same answer for every built-in field the rollout and kubectl touch.
* JSON merge patch (RFC 7386): maps merge, ``null`` deletes, everything else replaces.
* JSON patch (RFC 6902): add / remove / replace / move / copy / test on JSON pointers; this
  is what ``kubectl rollout undo`` sends.

Every function returns a new document and never mutates its inputs.
"""

from __future__ import annotations

import copy
from typing import Any

# Field name → merge key, from the ``patchMergeKey`` tags of k8s.io/api.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# Lists of scalars with patchStrategy "merge" (set union instead of replace).
MERGED_PRIMITIVE_LISTS = frozenset({"finalizers"})


class PatchError(ValueError):
    """The patch document is malformed or a JSON patch ``test`` failed."""


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        # Container ports and Service ports share a field name but not a merge key.
        sample = next((i for i in items if isinstance(i, dict)), {})
        return "port" if "port" in sample and "containerPort" not in sample else "containerPort"
    return MERGE_KEYS.get(field)


def strategic_merge(original: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to ``original``."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    return _merge_map(original if isinstance(original, dict) else {}, patch)


def _merge_map(original: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    result = copy.deepcopy(original)
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            merged = _merge_map(current if isinstance(current, dict) else {}, value)
            result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            result[key] = copy.deepcopy(value)
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _apply_order(field, result[field], order)
    return result


def _merge_list(field: str, original: Any, patch: list[Any]) -> list[Any]:
    original_list = original if isinstance(original, list) else []
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    if field in MERGED_PRIMITIVE_LISTS:
        return original_list + [v for v in patch if v not in original_list]
    key = _merge_key(field, patch + original_list)
    if key is None or not all(isinstance(i, dict) for i in patch):
        return copy.deepcopy(patch)
    result = copy.deepcopy(original_list)
    for item in patch:
        if key not in item:
            raise PatchError(f"{field}: element without merge key {key!r}")
        index = next((n for n, cur in enumerate(result) if isinstance(cur, dict) and cur.get(key) == item[key]),
                     None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_merge_map({}, item))
        else:
            result[index] = _merge_map(result[index], item)
    return result


def _apply_order(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    key = _merge_key(field, items)
    if key is None:
        return items
    rank = {o.get(key): n for n, o in enumerate(order) if isinstance(o, dict)}
    # Elements the order does not mention keep their relative place after the listed ones.
    return sorted(items, key=lambda i: rank.get(i.get(key), len(rank)) if isinstance(i, dict) else len(rank))


def json_merge(original: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[_index(node, part, existing=True)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise PatchError(f"path segment {part!r} not found")
    return node


def _index(node: list[Any], part: str, *, existing: bool) -> int:
    if part == "-" and not existing:
        return len(node)
    try:
        index = int(part)
    except ValueError as exc:
        raise PatchError(f"invalid array index {part!r}") from exc
    limit = len(node) if existing else len(node) + 1
    if not 0 <= index < limit:
        raise PatchError(f"array index {index} out of range")
    return index


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts)
    if isinstance(parent, list):
        return parent[_index(parent, parts[-1], existing=True)]
    if isinstance(parent, dict) and parts[-1] in parent:
        return parent[parts[-1]]
    raise PatchError(f"path {path!r} not found")


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent = _parent(doc, parts)
    if isinstance(parent, list):
        return parent.pop(_index(parent, parts[-1], existing=True))
    if isinstance(parent, dict) and parts[-1] in parent:
        return parent.pop(parts[-1])
    raise PatchError(f"path {path!r} not found")


def _add(doc: Any, path: str, value: Any, *, replace: bool) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts)
    if isinstance(parent, list):
        index = _index(parent, parts[-1], existing=replace)
        if replace:
            parent[index] = value
        else:
            parent.insert(index, value)
    elif isinstance(parent, dict):
        if replace and parts[-1] not in parent:
            raise PatchError(f"path {path!r} not found")
        parent[parts[-1]] = value
    else:
        raise PatchError(f"cannot add under a scalar at {path!r}")
    return doc


def json_patch(original: Any, operations: Any) -> Any:
    """RFC 6902."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a JSON array")
    doc = copy.deepcopy(original)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")), replace=False)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op.get("value")), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "move":
            value = _remove(doc, op["from"])
            doc = _add(doc, path, value, replace=False)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op["from"])), replace=False)
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise PatchError(f"test failed at {path!r}")
        else:
            raise PatchError(f"unknown operation {kind!r}")
    return doc
