"""Strategic merge, JSON merge and JSON patch on plain dicts."""

from __future__ import annotations

import pytest

from phasegate.rehearsal.k8s_patch import PatchError, json_merge, json_patch, strategic_merge

POD = {"containers": [
    {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
     "ports": [{"containerPort": 8080}]},
    {"name": "sidecar", "image": "s:1"},
]}


def test_strategic_merge_merges_containers_and_env_by_name() -> None:
    out = strategic_merge(POD, {"containers": [{"name": "app", "env": [{"name": "B", "value": "3"}]}]})
    assert out["containers"][0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]
    assert out["containers"][1] == POD["containers"][1]


def test_strategic_merge_delete_directive_removes_one_element() -> None:
    out = strategic_merge(POD, {"containers": [{"name": "sidecar", "$patch": "delete"}]})
    assert [c["name"] for c in out["containers"]] == ["app"]


def test_strategic_merge_replace_directive_replaces_the_list() -> None:
    out = strategic_merge(POD, {"containers": [{"name": "only", "image": "o:1"}, {"$patch": "replace"}]})
    assert out["containers"] == [{"name": "only", "image": "o:1"}]


def test_strategic_merge_container_ports_merge_on_container_port() -> None:
    out = strategic_merge(POD, {"containers": [{"name": "app", "ports": [{"containerPort": 9090}]}]})
    assert out["containers"][0]["ports"] == [{"containerPort": 8080}, {"containerPort": 9090}]


def test_strategic_merge_set_element_order_reorders() -> None:
    out = strategic_merge(POD, {"$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}]})
    assert [c["name"] for c in out["containers"]] == ["sidecar", "app"]


def test_strategic_merge_null_deletes_a_key_and_inputs_are_not_mutated() -> None:
    out = strategic_merge(POD, {"containers": [{"name": "app", "ports": None}]})
    assert "ports" not in out["containers"][0] and "ports" in POD["containers"][0]


def test_json_merge_replaces_lists_and_null_deletes() -> None:
    assert json_merge({"a": [1, 2], "b": {"c": 1, "d": 2}}, {"a": [3], "b": {"c": None}}) == {"a": [3], "b": {"d": 2}}


def test_json_patch_applies_operations_in_order_and_test_can_fail() -> None:
    doc = json_patch({"a": {"b": [1, 2]}}, [{"op": "add", "path": "/a/b/-", "value": 3},
                                           {"op": "move", "from": "/a/b", "path": "/c"},
                                           {"op": "copy", "from": "/c", "path": "/d"},
                                           {"op": "replace", "path": "/c/0", "value": 0}])
    assert doc == {"a": {}, "c": [0, 2, 3], "d": [1, 2, 3]}
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "test", "path": "/c/0", "value": 9}])
