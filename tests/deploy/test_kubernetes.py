"""deploy/kubernetes/: schema-valid for the pinned Kubernetes version (`kubernetes-validate`,
strict: unknown fields are errors) and holding the promises of the README."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import KUBERNETES, require_program, run, said

MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
LABEL = "app.kubernetes.io/component"


def kubernetes_validate() -> str:
    return require_program("kubernetes-validate", "pip install -e '.[test]' installs it")


def resources() -> list[dict[str, Any]]:
    return [
        document
        for path in MANIFESTS
        for document in yaml.safe_load_all(path.read_text())
        if document is not None
    ]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [resource for resource in resources() if resource["kind"] == kind]


def deployment(component: str) -> dict[str, Any]:
    (found,) = [
        item
        for item in of_kind("Deployment")
        if item["spec"]["template"]["metadata"]["labels"][LABEL] == component
    ]
    return found


def test_manifests_pass_strict_schema_validation() -> None:
    assert MANIFESTS
    result = run([kubernetes_validate(), "--strict", *map(str, MANIFESTS)])
    assert result.returncode == 0, said(result)
    assert "passed" in result.stdout, said(result)


def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path: Path) -> None:
    """The check above can fail: a replica count as text and a misspelt field are refused."""
    broken = (KUBERNETES / "server.yaml").read_text()
    broken = broken.replace("replicas: 1", 'replicas: "one"')
    broken = broken.replace("readOnlyRootFilesystem:", "readOnlyRootFileSystem:")
    (tmp_path / "server.yaml").write_text(broken)
    result = run([kubernetes_validate(), "--strict", str(tmp_path / "server.yaml")])
    assert result.returncode != 0, said(result)


@pytest.mark.parametrize("component", ["server", "client"])
def test_pods_run_unprivileged_on_a_read_only_root_with_probes_and_limits(
    component: str,
) -> None:
    pod = deployment(component)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert set(container["resources"]) == {"requests", "limits"}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    claim = volumes[mounts["/opt/data"]]["persistentVolumeClaim"]["claimName"]
    assert claim in {item["metadata"]["name"] for item in of_kind("PersistentVolumeClaim")}


def test_client_resources_are_those_of_the_original_docs() -> None:
    (container,) = deployment("client")["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "4", "memory": "8Gi"},
    }


def test_two_server_replicas_share_postgresql() -> None:
    server = deployment("server")
    assert server["spec"]["replicas"] == 2
    (container,) = server["spec"]["template"]["spec"]["containers"]
    db_path = next(item for item in container["env"] if item["name"] == "DB_PATH")
    assert db_path["valueFrom"]["secretKeyRef"]["key"] == "db-path"  # PostgreSQL, not SQLite
    claims = {claim["metadata"]["name"]: claim for claim in of_kind("PersistentVolumeClaim")}
    assert claims["job-orchestrator-server-data"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_only_the_server_may_reach_the_clients() -> None:
    (policy,) = of_kind("NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"][LABEL] == "client"
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    (rule,) = spec["ingress"]
    (source,) = rule["from"]
    assert source == {
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/name": "job-orchestrator", LABEL: "server"}
        }
    }
    assert rule["ports"] == [{"protocol": "TCP", "port": 9000}]
    assert spec["egress"] == []
    client_labels = deployment("client")["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= client_labels.items()


def test_services_route_to_the_deployments() -> None:
    services = {item["metadata"]["name"]: item["spec"] for item in of_kind("Service")}
    server_labels = deployment("server")["spec"]["template"]["metadata"]["labels"]
    client_labels = deployment("client")["spec"]["template"]["metadata"]["labels"]
    assert services["job-orchestrator-server"]["selector"].items() <= server_labels.items()
    client_service = services["job-orchestrator-client-example"]
    assert client_service["selector"].items() <= client_labels.items()
    (config,) = of_kind("ConfigMap")
    assert (
        config["data"]["SERVICE_EXAMPLE_CLIENTS"] == "http://job-orchestrator-client-example:9000"
    )
