"""deploy/kubernetes/: schema-valid for the pinned Kubernetes version (`kubernetes-validate`,
strict: unknown fields are errors) and holding the promises of docs/deploying.md."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from testkit import require
from tests.deploy.tools import KUBERNETES, run, said

MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
LABEL = "app.kubernetes.io/component"


def kubernetes_validate() -> str:
    return require("kubernetes-validate", "pip install -e '.[test]' installs it")


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
def test_pods_run_on_a_read_only_root_with_probes_and_limits(component: str) -> None:
    pod = deployment(component)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
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


def test_the_server_runs_unprivileged() -> None:
    pod = deployment("server")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    (container,) = pod["containers"]
    assert "add" not in container["securityContext"]["capabilities"]
    assert "runAsUser" not in container["securityContext"]


#: What the root client needs: switch to job uids, kill their leftovers, hand over and take
#: back their files; NET_ADMIN for the entry point's rule, dropped before the client starts
#: (with SETPCAP, which that drop takes).
CLIENT_CAPABILITIES = {
    *("SETUID", "SETGID", "KILL", "CHOWN", "FOWNER", "DAC_OVERRIDE"),
    *("NET_ADMIN", "SETPCAP"),
}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def test_the_client_gives_every_job_its_own_uid() -> None:
    """Issue 21: jobs ran with the client's uid (1000) and read its token from its environ."""
    pod = deployment("client")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["runAsUser"] == 0
    assert context["runAsNonRoot"] is False
    assert set(context["capabilities"]["add"]) == CLIENT_CAPABILITIES
    assert context["allowPrivilegeEscalation"] is False
    # Not a group of every process of the pod, jobs included.
    assert "fsGroup" not in pod["securityContext"]
    assert "runAsNonRoot" not in pod["securityContext"]
    assert container["command"] == ["job-orchestrator-client"]
    first, _, last = env_of(container)["JOB_USERS"]["value"].partition("-")
    assert 65535 < int(first) <= int(last)
    (config,) = of_kind("ConfigMap")
    assert config["data"]["SANDBOX"] == "rlimits"


@pytest.mark.parametrize(
    ("component", "files"),
    [
        ("server", {"CLIENT_TOKEN_FILE": "client-token", "DB_PATH_FILE": "db-path"}),
        ("client", {"CLIENT_TOKEN_FILE": "client-token"}),
    ],
)
def test_secrets_are_files_of_the_secret_and_in_no_environment(
    component: str, files: dict[str, str]
) -> None:
    pod = deployment(component)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert not [name for name, item in env.items() if "valueFrom" in item]
    assert "CLIENT_TOKEN" not in env
    assert "DB_PATH" not in env
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for variable, key in files.items():
        path = PurePosixPath(env[variable]["value"])
        (mount,) = [mount for mount in mounts.values() if mount["mountPath"] == str(path.parent)]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "job-orchestrator"
        assert {"key": key, "path": path.name} in secret["items"]
        # The client's (root's) alone; the server's via its fsGroup. Never the jobs'.
        assert secret["defaultMode"] == (0o400 if component == "client" else 0o440)


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
    # PostgreSQL (the Secret's db-path), not SQLite.
    assert env_of(container)["DB_PATH_FILE"]["value"].endswith("/db-path")
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
