"""The emulator's REST semantics, over HTTP, as kube-apiserver defines them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from phasegate.rehearsal.cluster import SEED_IMAGE_REPO, SIDECAR, ClusterEmulator

DEPLOY = "/apis/apps/v1/namespaces/bodhi/deployments/bodhi-server"
STRATEGIC = {"Content-Type": "application/strategic-merge-patch+json"}


@pytest.fixture
def http(seeded_cluster: ClusterEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=seeded_cluster.url, timeout=5) as client:
        yield client


def test_strategic_merge_keeps_sidecar_and_env_when_only_the_image_is_patched(http: httpx.Client) -> None:
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "bodhi-server", "image": "x:2"}]}}}}
    d = http.patch(DEPLOY, json=patch, headers=STRATEGIC).json()
    containers = d["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["bodhi-server", SIDECAR]
    assert containers[0]["image"] == "x:2" and len(containers[0]["env"]) == 3


def test_put_with_a_stale_resource_version_is_rejected_with_409_conflict(http: httpx.Client) -> None:
    d = http.get(DEPLOY).json()
    http.patch(DEPLOY, json={"metadata": {"labels": {"x": "1"}}}, headers=STRATEGIC)
    response = http.put(DEPLOY, json=d)
    assert response.status_code == 409
    assert response.json()["kind"] == "Status" and response.json()["reason"] == "Conflict"


def test_patch_carrying_a_stale_resource_version_is_rejected_with_409(http: httpx.Client) -> None:
    stale = http.get(DEPLOY).json()["metadata"]["resourceVersion"]
    http.patch(DEPLOY, json={"metadata": {"labels": {"x": "1"}}}, headers=STRATEGIC)
    response = http.patch(DEPLOY, json={"metadata": {"resourceVersion": stale, "labels": {"x": "2"}}},
                          headers={"Content-Type": "application/merge-patch+json"})
    assert response.status_code == 409


def test_generation_bumps_on_spec_changes_only(http: httpx.Client) -> None:
    generation = http.get(DEPLOY).json()["metadata"]["generation"]
    after_label = http.patch(DEPLOY, json={"metadata": {"labels": {"x": "1"}}}, headers=STRATEGIC).json()
    assert after_label["metadata"]["generation"] == generation
    after_scale = http.patch(DEPLOY, json={"spec": {"replicas": 3}}, headers=STRATEGIC).json()
    assert after_scale["metadata"]["generation"] == generation + 1


def test_writes_to_the_main_resource_ignore_status(http: httpx.Client) -> None:
    d = http.patch(DEPLOY, json={"status": {"replicas": 99}}, headers=STRATEGIC).json()
    assert d["status"]["replicas"] == 10


def test_create_of_an_existing_name_is_409_already_exists(http: httpx.Client) -> None:
    response = http.post("/api/v1/namespaces/bodhi/configmaps", json={"metadata": {"name": "bodhi-config"}})
    assert response.status_code == 409 and response.json()["reason"] == "AlreadyExists"


def test_get_of_a_missing_object_is_a_404_not_found_status(http: httpx.Client) -> None:
    body = http.get("/apis/apps/v1/namespaces/bodhi/deployments/nope").json()
    assert (body["kind"], body["code"], body["reason"]) == ("Status", 404, "NotFound")
    assert body["details"] == {"name": "nope", "group": "apps", "kind": "deployments"}


@pytest.mark.parametrize(("selector", "count"), [
    ("app=bodhi-server", 10), ("app!=bodhi-server", 0), ("app in (other,bodhi-server)", 10), ("app notin (bodhi-server)", 0),
    ("track!=canary", 10), ("track in (canary,stable)", 0), ("pod-template-hash", 10), ("!pod-template-hash", 0),
    ("!track", 10), ("app==bodhi-server,track=canary", 0),
])
def test_label_selectors_filter_lists(http: httpx.Client, selector: str, count: int) -> None:
    items = http.get("/api/v1/namespaces/bodhi/pods", params={"labelSelector": selector}).json()["items"]
    assert len(items) == count


def test_field_selector_on_metadata_name(http: httpx.Client) -> None:
    items = http.get("/apis/apps/v1/deployments", params={"fieldSelector": "metadata.name=bodhi-server"}).json()
    assert sorted(i["metadata"]["namespace"] for i in items["items"]) == ["bodhi", "bodhi-staging"]


def test_json_patch_and_json_merge_patch(http: httpx.Client) -> None:
    path = "/api/v1/namespaces/bodhi/configmaps/bodhi-config"
    http.patch(path, json=[{"op": "add", "path": "/data/a", "value": "1"}, {"op": "remove", "path": "/data/log_level"}],
               headers={"Content-Type": "application/json-patch+json"})
    data = http.patch(path, json={"data": {"a": None, "b": "2"}},
                      headers={"Content-Type": "application/merge-patch+json"}).json()["data"]
    assert data == {"enable_token_refresh_locking": "true", "b": "2"}


def test_scale_subresource_reads_and_sets_replicas(http: httpx.Client, seeded_cluster: ClusterEmulator) -> None:
    scale = http.get(DEPLOY + "/scale").json()
    assert (scale["kind"], scale["spec"]["replicas"]) == ("Scale", 10)
    assert scale["status"]["selector"] == "app=bodhi-server"
    http.patch(DEPLOY + "/scale", json={"spec": {"replicas": 2}},
               headers={"Content-Type": "application/merge-patch+json"})
    assert seeded_cluster.wait_rolled_out("bodhi", "bodhi-server")["status"]["replicas"] == 2
    assert len(seeded_cluster.pods("bodhi")) == 2


def test_deleting_a_deployment_garbage_collects_its_replicasets_and_pods(
        http: httpx.Client, seeded_cluster: ClusterEmulator) -> None:
    assert http.delete(DEPLOY).json()["status"] == "Success"
    assert seeded_cluster.store.list("apps/replicasets", "bodhi") == []
    assert seeded_cluster.pods("bodhi") == []


def test_watch_streams_events_after_the_listed_resource_version(
        http: httpx.Client, seeded_cluster: ClusterEmulator) -> None:
    rv = http.get("/apis/apps/v1/namespaces/bodhi/deployments").json()["metadata"]["resourceVersion"]
    threading.Timer(0.05, lambda: seeded_cluster.store.mutate(
        "apps/deployments", "bodhi", "bodhi-server",
        lambda d: {**d, "metadata": {**d["metadata"], "labels": {"app": "bodhi-server", "x": "1"}}})).start()
    with http.stream("GET", "/apis/apps/v1/namespaces/bodhi/deployments",
                     params={"watch": "1", "resourceVersion": rv, "timeoutSeconds": "2"}) as stream:
        first = json.loads(next(stream.iter_lines()))
    assert first["type"] == "MODIFIED" and first["object"]["metadata"]["labels"]["x"] == "1"


def test_discovery_lists_resources_with_short_names_and_scale(http: httpx.Client) -> None:
    apps = {r["name"]: r for r in http.get("/apis/apps/v1").json()["resources"]}
    assert apps["deployments"]["shortNames"] == ["deploy"]
    assert apps["deployments/scale"]["group"] == "autoscaling"
    assert http.get("/version").json()["minor"] == "32"


def test_faults_are_reproducible_for_a_seed(seeded_cluster: ClusterEmulator) -> None:
    def draws() -> list[tuple[float, int | None]]:
        seeded_cluster.faults.set(error_500=0.3, conflict_409=0.2, slow=0.1, seed=3)
        return [seeded_cluster.faults.draw("patch") for _ in range(50)]

    first = draws()
    assert first == draws()
    assert {code for _, code in first} == {None, 500, 409}
    assert all(code != 409 for _, code in (seeded_cluster.faults.draw("get") for _ in range(200)))


def test_denied_verb_gets_a_403_forbidden_status(http: httpx.Client, seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.rbac.deny("patch", "deployments")
    response = http.patch(DEPLOY, json={"spec": {"replicas": 1}}, headers=STRATEGIC)
    assert response.status_code == 403 and response.json()["reason"] == "Forbidden"
    assert http.get(DEPLOY).status_code == 200


def test_in_process_store_sees_what_http_clients_wrote(http: httpx.Client, seeded_cluster: ClusterEmulator) -> None:
    http.patch(DEPLOY, json={"spec": {"template": {"spec": {"containers": [
        {"name": "bodhi-server", "image": SEED_IMAGE_REPO + ":9"}]}}}}, headers=STRATEGIC)
    d = seeded_cluster.store.get("apps/deployments", "bodhi", "bodhi-server")
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == SEED_IMAGE_REPO + ":9"
