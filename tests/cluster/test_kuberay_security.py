"""deploy/ (KubeRay) security: Ray token auth, a NetworkPolicy per Ray cluster, the API key from a Secret, and
hardened pods. Checked offline, as ``test_cluster_yaml.py`` checks the launcher's security group.

What a pod of the Kubernetes cluster could do without these: run code on the Ray cluster through the job API
(8265), GCS (6379) or the client port (10001), with the shared data and registry volume mounted; read every
endpoint of the service; escalate to root through the image's passwordless sudo.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

import pytest
import yaml

from tests.cluster.test_kuberay import DEPLOY, MANIFESTS, ROOT, cluster_spec, load, load_all, pod_templates

POLICIES = "network-policy.yaml"
API_KEY_ENV = "CONVFM_API_KEY"
API_KEY_SECRET = "convfm-api-key"
# The only ports reachable from pods that are not Ray pods of the same cluster, and from whom.
JOB_API, SERVE_HTTP = 8265, 8000


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return {name: load(name) for name in MANIFESTS}


@pytest.fixture()
def policies() -> list[dict[str, Any]]:
    documents = load_all(POLICIES)
    assert documents and all(d["kind"] == "NetworkPolicy" for d in documents)
    return documents


def _containers(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for role, pod in pod_templates(manifest):
        for container in pod["containers"]:
            yield role, pod, container


def _pod_labels(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    spec = cluster_spec(manifest)
    yield "head", spec["headGroupSpec"]["template"].get("metadata", {}).get("labels", {})
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"].get("metadata", {}).get("labels", {})


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


# ------------------------------------------------------------------------------------------ Ray token auth
@pytest.mark.parametrize("name", MANIFESTS)
def test_every_ray_cluster_uses_token_auth(manifests, name):
    """KubeRay (>= 1.5.1) makes the token Secret and sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in every Ray
    container, the job submitter's included, and uses the token itself for the dashboard calls it makes."""
    manifest = manifests[name]
    assert cluster_spec(manifest).get("authOptions") == {"mode": "token"}, name
    for role, _, container in _containers(manifest):
        overridden = {e["name"] for e in container.get("env", [])} & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
        assert not overridden, f"{name} {role}: {overridden} set by hand (KubeRay sets them from its Secret)"


# --------------------------------------------------------------------------------------- hardened pods
def _hardened(where: str, pod: dict[str, Any], container: dict[str, Any]) -> None:
    context, pod_context = container.get("securityContext", {}), pod.get("securityContext", {})
    assert context.get("allowPrivilegeEscalation") is False, f"{where}: sudo in the Ray image would give root"
    assert not context.get("privileged"), where
    assert context.get("capabilities", {}).get("drop") == ["ALL"], where
    assert {**pod_context, **context}.get("runAsNonRoot") is True, where
    assert {**pod_context, **context}.get("seccompProfile") == {"type": "RuntimeDefault"}, where
    assert not pod.get("hostNetwork") and not pod.get("hostPID"), where


def test_every_pod_runs_unprivileged(manifests):
    toolbox = load_all("storage.yaml")[1]
    for name, manifest in {**manifests, "storage.yaml": toolbox}.items():
        for role, pod, container in _containers(manifest):
            _hardened(f"{name} {role}", pod, container)
            if role == "head" and cluster_spec(manifest).get("enableInTreeAutoscaling"):  # KubeRay's sidecar
                autoscaler = {"securityContext": cluster_spec(manifest)["autoscalerOptions"]["securityContext"]}
                _hardened(f"{name} autoscaler", pod, autoscaler)


def test_the_hardening_check_catches_privilege_escalation(manifests):
    role, pod, container = next(_containers(manifests["rayservice.yaml"]))
    container["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(AssertionError, match="sudo"):
        _hardened(role, pod, container)


# ------------------------------------------------------------------------------------------ network policy
def _check_policies(manifests: dict[str, dict[str, Any]], policies: list[dict[str, Any]]) -> None:
    """Every Ray pod is selected by a policy; every policy selecting it admits only Ray pods of its own cluster
    on all ports, and others on the job API (KubeRay's operator, the RayJob's submitter) or Serve's HTTP port
    (RayService only: the ingress) only."""
    for name, manifest in manifests.items():
        for role, labels in _pod_labels(manifest):
            selecting = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
            assert selecting, f"{name} {role}: no NetworkPolicy selects the pod (labels {labels})"
            for policy in selecting:
                where = f"{name} {role}: policy {policy['metadata']['name']}"
                assert "Ingress" in policy["spec"]["policyTypes"], where
                for rule in policy["spec"].get("ingress", []):
                    assert rule.get("from"), f"{where}: a rule without `from` admits every pod"
                    same_cluster = all(set(peer) == {"podSelector"} and _selects(peer["podSelector"], labels)
                                       for peer in rule["from"])
                    if same_cluster:
                        continue
                    ports = {p.get("port") for p in rule.get("ports", [])}
                    allowed = {JOB_API, SERVE_HTTP} if manifest["kind"] == "RayService" else {JOB_API}
                    assert ports and ports <= allowed, f"{where}: opens {sorted(ports, key=str) or 'all ports'} " \
                                                       f"to {rule['from']}"


def test_ray_ports_are_open_only_between_the_ray_pods_of_one_cluster(manifests, policies):
    _check_policies(manifests, policies)
    serve = next(p for p in policies if _selects(p["spec"]["podSelector"],
                                                 dict(_pod_labels(manifests["rayservice.yaml"]))["head"]))
    to_serve = [r for r in serve["spec"]["ingress"] if {p["port"] for p in r.get("ports", [])} == {SERVE_HTTP}]
    assert to_serve, "the RayService policy must admit the ingress on 8000"


def test_the_policy_check_catches_an_open_gcs_port_and_a_missing_policy(manifests, policies):
    opened = [{**p, "spec": {**p["spec"], "ingress": [*p["spec"]["ingress"], {
        "from": [{"namespaceSelector": {}}], "ports": [{"port": 6379, "protocol": "TCP"}]}]}} for p in policies]
    with pytest.raises(AssertionError, match=r"opens \[6379\]"):
        _check_policies(manifests, opened)
    with pytest.raises(AssertionError, match="no NetworkPolicy selects"):
        _check_policies(manifests, policies[1:])


# ------------------------------------------------------------------------------------------ the API key
def test_the_service_requires_an_api_key_read_from_a_secret(manifests):
    manifest = manifests["rayservice.yaml"]
    args = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["api_key_env"] == API_KEY_ENV and args["auth_all_endpoints"] is True
    assert "*" not in args["allowed_hosts"] and "convfm-serve-svc" in args["allowed_hosts"]  # KubeRay's Service
    for role, _, container in _containers(manifest):  # the app is built, and the Api runs, on any of them
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get(API_KEY_ENV, {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name") \
            == API_KEY_SECRET, f"rayservice.yaml {role}: {API_KEY_ENV} must come from the {API_KEY_SECRET} Secret"
        assert "value" not in env[API_KEY_ENV], role
    readme = (DEPLOY / "README.md").read_text()
    assert re.search(rf"kubectl create secret generic {API_KEY_SECRET} --from-literal=", readme)
    assert POLICIES in readme and (ROOT / "docs" / "SERVING.md").is_file()
