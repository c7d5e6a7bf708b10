"""deploy/: the compose stack and the Kubernetes manifests agree with the config, the image and each other.

The Kubernetes manifests are validated against the Kubernetes OpenAPI schemas (strict: an unknown or
misspelt field fails) with `kubernetes-validate`, which ships the schemas, so nothing is downloaded.
compose.yaml has no schema checker on PyPI that ships the compose spec, so its structure is checked
here: the services, their health checks, what they depend on, the files they mount, the drain timing.
The config they share, deploy/gateway.toml, starts in tests/test_config.py.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CONFIG = tomllib.loads((DEPLOY / "gateway.toml").read_text())
#: The Kubernetes release the manifests are checked against (the newest kubernetes-validate ships).
K8S_VERSION = kubernetes_validate.latest_version()
LABELS = {"app.kubernetes.io/name": "respan-gateway"}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def drain_seconds() -> float:
    """What a stopping gateway may take: the streams' drain, then the last log writes."""
    return CONFIG["server"]["graceful_timeout"] + CONFIG["logging"]["shutdown_timeout"]


def required_env() -> set[str]:
    """The variables deploy/gateway.toml needs (``${VAR}`` without a default)."""
    def strings(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    return {name for text in strings(CONFIG) for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)}


def dockerfile_user() -> str:
    return re.findall(r"^USER (\S+)", (ROOT / "Dockerfile").read_text(), re.M)[-1]


# -- Kubernetes ------------------------------------------------------------------------------------

def kustomized() -> dict[str, dict[str, Any]]:
    """The resources `kubectl apply -k deploy` creates, by kind (the ConfigMap as kustomize makes it)."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    resources: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in load_all(DEPLOY / name):
            resources[doc["kind"]] = doc
    (generator,) = kustomization["configMapGenerator"]
    resources["ConfigMap"] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                              "data": {f: (DEPLOY / f).read_text() for f in generator["files"]}}
    return resources


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_manifests_match_the_kubernetes_schema(path: Path) -> None:
    for doc in load_all(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_but_the_secret() -> None:
    listed = {Path(p).name for p in yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]}
    # The Secret stays out: `kubectl apply -k` must not overwrite the real one with the placeholders.
    assert listed == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"secret.yaml"}
    kubernetes_validate.validate(kustomized()["ConfigMap"], K8S_VERSION, strict=True)


def test_the_deployment_probes_drains_and_runs_as_the_image_user() -> None:
    res = kustomized()
    pod = res["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == CONFIG["server"]["port"]

    # SIGKILL comes terminationGracePeriodSeconds after the preStop hook starts: the pause, then the drain.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pause >= 1
    assert pod["terminationGracePeriodSeconds"] >= pause + drain_seconds() + 5

    uid, gid = dockerfile_user().split(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"])) == (uid, gid)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True  # tests/test_image.py runs it so
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {"/config", "/data", "/tmp"} <= set(mounts)
    assert volumes[mounts["/config"]]["configMap"]["name"] == res["ConfigMap"]["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RESPAN_GATEWAY_CONFIG"] == "/config/" + next(iter(res["ConfigMap"]["data"]))


def test_the_secret_holds_what_the_config_needs() -> None:
    (secret,) = load_all(DEPLOY / "k8s/secret.yaml")
    pod = kustomized()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert [e["secretRef"]["name"] for e in container["envFrom"]] == [secret["metadata"]["name"]]
    assert required_env() <= set(secret["stringData"])
    # The placeholders are empty: no key, not even an example one, is committed.
    assert set(secret["stringData"].values()) == {""}


def test_service_pdb_and_hpa_point_at_the_gateway_pods() -> None:
    res = kustomized()
    deployment = res["Deployment"]
    assert deployment["spec"]["selector"]["matchLabels"] == LABELS
    assert LABELS.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert res["Service"]["spec"]["selector"] == LABELS
    assert res["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert res["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == LABELS
    assert res["PodDisruptionBudget"]["spec"]["minAvailable"] < res["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
    hpa = res["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    # The HPA scales on CPU utilisation: the container must request CPU.
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]


# -- compose ---------------------------------------------------------------------------------------

COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def seconds(duration: str) -> float:
    """A compose duration such as ``80s`` or ``1m30s``."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, duration
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


def test_compose_runs_two_gateways_with_two_workers_behind_nginx_with_postgres_and_redis() -> None:
    assert set(SERVICES) == {"gateway", "lb", "postgres", "redis"}
    gateway = SERVICES["gateway"]
    assert gateway["deploy"]["replicas"] == 2
    command = gateway["command"]
    assert command[:2] == ["respan-gateway", "serve"]
    assert command[command.index("--workers") + 1] == "${RESPAN_WORKERS:-2}"
    assert CONFIG["server"]["workers"] == 2
    assert gateway["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert "nginx" in SERVICES["lb"]["image"]
    # Only the load balancer is published; the gateways are reached through it.
    assert "ports" not in gateway and SERVICES["lb"]["ports"]


def test_compose_health_checks_and_start_order() -> None:
    for name, service in SERVICES.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES, (name, dependency)
            assert condition == {"condition": "service_healthy"}, (name, dependency)
    assert set(SERVICES["gateway"]["depends_on"]) == {"postgres", "redis"}
    assert set(SERVICES["lb"]["depends_on"]) == {"gateway"}
    assert "/readyz" in SERVICES["gateway"]["healthcheck"]["test"][-1]


def test_compose_gives_the_config_what_it_needs_and_mounts_files_that_exist() -> None:
    gateway = SERVICES["gateway"]
    env = gateway["environment"]
    assert required_env() <= set(env)
    # Secrets come from the environment (deploy/.env), never written in the file.
    for name in ("RESPAN_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        assert env[name].startswith("${" + name), name
    assert "@postgres:5432/" in env["DATABASE_URL"] and "${POSTGRES_PASSWORD" in env["DATABASE_URL"]
    mounted = {}
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (DEPLOY / source).is_file(), source
                mounted[target] = source
    assert mounted[env["RESPAN_GATEWAY_CONFIG"]] == "./gateway.toml"
    assert mounted["/etc/nginx/nginx.conf"] == "./nginx.conf"
    example = (DEPLOY / "env.example").read_text()
    for name in re.findall(r"\$\{([A-Z_]+)", (DEPLOY / "compose.yaml").read_text()):
        assert re.search(rf"^#? ?{name}=", example, re.M), f"{name} is not in deploy/env.example"


def test_compose_lets_the_drain_finish_and_nginx_streams() -> None:
    assert seconds(SERVICES["gateway"]["stop_grace_period"]) >= drain_seconds() + 5
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert re.search(r"server gateway:8000\b", nginx)
    assert "proxy_buffering off;" in nginx
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", nginx)[1])
    assert read_timeout >= CONFIG.get("upstream", {}).get("read_timeout", 600)
