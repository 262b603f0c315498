"""The emulator's deployment controller: revisions, ReplicaSet reuse, readiness, deadlines."""

from __future__ import annotations

import time

from phasegate.rehearsal.cluster import SEED_IMAGE_REPO, ClusterEmulator
from phasegate.rehearsal.k8s_controller import REVISION


def _set_image(emulator: ClusterEmulator, image: str, name: str = "bodhi-server") -> None:
    def change(d: dict) -> dict:
        d["spec"]["template"]["spec"]["containers"][0]["image"] = image
        return d

    emulator.store.mutate("apps/deployments", "bodhi", name, change)


def _revisions(emulator: ClusterEmulator) -> dict[str, str]:
    return {rs["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1]: rs["metadata"]["annotations"][REVISION]
            for rs in emulator.store.list("apps/replicasets", "bodhi")}


def test_seed_leaves_three_revisions_with_the_last_one_running(seeded_cluster: ClusterEmulator) -> None:
    assert _revisions(seeded_cluster) == {"1.4.0": "1", "1.4.1": "2", "1.5.0": "3"}
    d = seeded_cluster.deployment("bodhi", "bodhi-server")
    assert d["metadata"]["annotations"][REVISION] == "3" and seeded_cluster.rolled_out("bodhi", "bodhi-server")


def test_template_change_creates_a_replicaset_with_the_next_revision(seeded_cluster: ClusterEmulator) -> None:
    _set_image(seeded_cluster, SEED_IMAGE_REPO + ":2.0.0")
    d = seeded_cluster.wait_rolled_out("bodhi", "bodhi-server")
    assert _revisions(seeded_cluster)["2.0.0"] == "4" and d["metadata"]["annotations"][REVISION] == "4"
    conditions = {c["type"]: c["reason"] for c in d["status"]["conditions"]}
    assert conditions == {"Available": "MinimumReplicasAvailable", "Progressing": "NewReplicaSetAvailable"}


def test_restoring_an_old_template_reuses_its_replicaset_under_a_new_revision(seeded_cluster: ClusterEmulator) -> None:
    _set_image(seeded_cluster, SEED_IMAGE_REPO + ":1.4.1")
    seeded_cluster.wait_rolled_out("bodhi", "bodhi-server")
    assert _revisions(seeded_cluster) == {"1.4.0": "1", "1.5.0": "3", "1.4.1": "4"}
    assert len(seeded_cluster.store.list("apps/replicasets", "bodhi")) == 3


def test_old_pods_serve_until_new_ones_are_ready(seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.behaviour.bad_images.add("bad:1")
    _set_image(seeded_cluster, "bad:1")
    deadline = time.monotonic() + 5
    while len(seeded_cluster.pods("bodhi")) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    phases = [p["status"].get("phase") for p in seeded_cluster.pods("bodhi")]
    assert (phases.count("Running"), phases.count("Pending")) == (10, 10)


def test_bad_image_ends_in_progress_deadline_exceeded(seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.behaviour.bad_images.add("bad:1")
    _set_image(seeded_cluster, "bad:1")
    deadline = time.monotonic() + 5
    reason = ""
    while reason != "ProgressDeadlineExceeded" and time.monotonic() < deadline:
        d = seeded_cluster.deployment("bodhi", "bodhi-server")
        reason = next((c["reason"] for c in d["status"].get("conditions", []) if c["type"] == "Progressing"), "")
        time.sleep(0.02)
    assert reason == "ProgressDeadlineExceeded"
    waiting = [p for p in seeded_cluster.pods("bodhi", "pod-template-hash") if p["status"].get("phase") == "Pending"]
    assert waiting and waiting[0]["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"


def test_revision_history_limit_prunes_the_oldest_replicasets(seeded_cluster: ClusterEmulator) -> None:
    seeded_cluster.store.mutate("apps/deployments", "bodhi", "bodhi-server",
                                lambda d: {**d, "spec": {**d["spec"], "revisionHistoryLimit": 1}})
    _set_image(seeded_cluster, SEED_IMAGE_REPO + ":2.0.0")
    seeded_cluster.wait_rolled_out("bodhi", "bodhi-server")
    seeded_cluster.controller.settle()
    assert _revisions(seeded_cluster) == {"1.5.0": "3", "2.0.0": "4"}


def test_pods_carry_template_labels_hash_and_owner(seeded_cluster: ClusterEmulator) -> None:
    rs = next(r for r in seeded_cluster.store.list("apps/replicasets", "bodhi") if r["spec"]["replicas"])
    pods = seeded_cluster.pods("bodhi")
    assert len(pods) == 10
    for pod in pods:
        assert pod["metadata"]["labels"]["pod-template-hash"] == rs["metadata"]["labels"]["pod-template-hash"]
        assert pod["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
