"""The Kubernetes manifests under deploy/kubernetes: every object valid against the
Kubernetes API schemas (kubernetes-validate, strict: unknown fields fail), the KEDA objects
against KEDA's own CRD schemas kept in the repo, and the wiring between them (probes on the
ports and paths our servers answer, grace periods above the drain times, names that match)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from hewer.config import ClientSettings, EngineSettings
from hewer.durations import parse_duration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KEDA_CRDS = DEPLOY / "schemas" / "keda"
K8S_VERSION = "1.30.0"


def load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("name", ["engine.yaml", "worker.yaml"])
@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_core_objects_match_the_kubernetes_schemas(name: str, version: str) -> None:
    docs = load(name)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in sorted(KEDA_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def test_keda_objects_match_kedas_crd_schemas() -> None:
    schemas = _crd_schemas()
    docs = load("keda.yaml")
    assert {d["kind"] for d in docs} == {"ScaledObject", "TriggerAuthentication"}
    for doc in docs:
        schema = schemas[(doc["apiVersion"], doc["kind"])]
        jsonschema.validate(doc, schema)


def test_a_broken_keda_object_fails_the_schema() -> None:
    schema = _crd_schemas()[("keda.sh/v1alpha1", "ScaledObject")]
    scaled = by_kind(load("keda.yaml"), "ScaledObject")
    del scaled["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, schema)
    scaled = by_kind(load("keda.yaml"), "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["targetValue"] = 8  # must be a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, schema)


def test_the_pieces_refer_to_each_other_and_to_real_settings() -> None:
    engine_docs, worker_docs, keda_docs = (
        load("engine.yaml"),
        load("worker.yaml"),
        load("keda.yaml"),
    )
    engine = by_kind(engine_docs, "Deployment")
    service = by_kind(engine_docs, "Service")
    worker = by_kind(worker_docs, "Deployment")
    scaled = by_kind(keda_docs, "ScaledObject")
    auth = by_kind(keda_docs, "TriggerAuthentication")

    # Every HEWER_* variable set is a setting the process reads (a typo would be ignored).
    engine_c = engine["spec"]["template"]["spec"]["containers"][0]
    worker_c = worker["spec"]["template"]["spec"]["containers"][0]
    for container, model in ((engine_c, EngineSettings), (worker_c, ClientSettings)):
        for name in env_of(container):
            assert name.startswith("HEWER_")
            assert name.removeprefix("HEWER_").lower() in model.model_fields, name

    # Probes point at the paths our servers answer, on the ports they listen on.
    assert engine_c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert engine_c["livenessProbe"]["httpGet"]["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in engine_c["ports"]}
    assert ports == {"grpc": EngineSettings().port, "http": EngineSettings().api_port}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert service["spec"]["selector"] == engine["spec"]["template"]["metadata"]["labels"]
    worker_env = env_of(worker_c)
    health_port = int(worker_env["HEWER_WORKER_HEALTHCHECK_PORT"])
    assert {p["containerPort"] for p in worker_c["ports"]} == {health_port}
    for probe in ("livenessProbe", "readinessProbe"):
        assert worker_c[probe]["httpGet"] == {"path": "/health", "port": "health"}

    # Graceful stops finish before the kubelet kills: pod grace above the drain time.
    drain = parse_duration(worker_env["HEWER_GRACE_PERIOD"]).total_seconds()
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    shutdown = parse_duration(env_of(engine_c)["HEWER_SHUTDOWN_GRACE"]).total_seconds()
    assert engine["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > shutdown

    # KEDA scales the worker Deployment, with the token of the Secret the worker uses.
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    triggers = scaled["spec"]["triggers"]
    # One on what is queued, one on what runs (scaling in busy workers would redo work).
    assert sorted(t["metadata"]["valueLocation"].split(".", 1)[1] for t in triggers) == [
        "queued.total",
        "running.total",
    ]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "token"
    # KEDA reads with a token of its own (read-only), not the workers'.
    assert ref["name"] != worker_env["HEWER_TOKEN"]["secretKeyRef"]["name"]
    for trigger in triggers:
        assert trigger["type"] == "metrics-api"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert trigger["metadata"]["authMode"] == "bearer"
        assert trigger["metadata"]["url"].startswith(
            f"http://{service['metadata']['name']}:{EngineSettings().api_port}/api/v1/tenants/"
        )
