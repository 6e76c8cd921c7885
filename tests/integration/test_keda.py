"""KEDA's part, played against a real engine and worker: read deploy/kubernetes/keda.yaml,
fetch the URL its metrics-api trigger names with the token its TriggerAuthentication names,
read the value at its ``valueLocation`` (GJSON path syntax, as KEDA does) and compute the
replica count KEDA and the HPA it drives would ask for, while the queue fills and drains."""

from __future__ import annotations

import json
import math
import re
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from hewer import Context, Hewer
from hewer.engine.core.scopes import Scope
from hewer.testing import EngineThread
from tests.helpers import scoped_token, wait_for
from tests.integration.test_rest import tenant

KEDA_YAML = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "keda.yaml"
# Where the manifests reach the engine, and the tenant placeholder users replace.
SERVICE_URL = "http://hewer-engine:8080"
TENANT_PLACEHOLDER = "TENANT_ID"


def gjson_get(doc: Any, path: str) -> Any:
    """The value at a GJSON path of plain keys and indexes (``a.b.0``; ``\\.`` escapes a
    dot inside a key). Wildcards, queries and modifiers are refused, not guessed at."""
    if re.search(r"(?<!\\)[*?#|@]", path):
        raise ValueError(f"GJSON feature not supported here: {path!r}")
    parts = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", path)]
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise KeyError(f"{path!r}: no {part!r} in {json.dumps(doc)[:200]}")
    return doc


@dataclass(frozen=True)
class Trigger:
    url: str
    token: str
    location: str
    target: float
    activation: float

    def metric(self) -> float:
        request = urllib.request.Request(
            self.url, headers={"Authorization": f"Bearer {self.token}"}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            assert response.status == 200
            value = gjson_get(json.loads(response.read()), self.location)
        assert isinstance(value, int | float), value
        return float(value)


class Keda:
    """What KEDA does with the ScaledObject, reduced to its arithmetic. Each trigger is
    active above its ``activationTargetValue`` and asks for ceil(value / targetValue)
    replicas (metric type AverageValue, KEDA's default); the HPA takes the largest ask,
    clamped to [max(minReplicaCount, 1), maxReplicaCount]; with no trigger active, KEDA
    scales to minReplicaCount. (The HPA's 10% tolerance band and cooldown timing are left
    out: they delay a change, they do not change its target.)"""

    def __init__(self, engine: EngineThread, secrets: dict[tuple[str, str], str]) -> None:
        docs = [d for d in yaml.safe_load_all(KEDA_YAML.read_text()) if d]
        self.scaled = next(d for d in docs if d["kind"] == "ScaledObject")
        self.triggers: dict[str, Trigger] = {}
        for trigger in self.scaled["spec"]["triggers"]:
            assert trigger["type"] == "metrics-api"
            meta = trigger["metadata"]
            assert meta["format"] == "json" and meta["authMode"] == "bearer"
            auth = next(
                d
                for d in docs
                if d["kind"] == "TriggerAuthentication"
                and d["metadata"]["name"] == trigger["authenticationRef"]["name"]
            )
            (ref,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "token"]
            url = meta["url"]
            assert url.startswith(SERVICE_URL + "/") and TENANT_PLACEHOLDER in url
            self.triggers[meta["valueLocation"]] = Trigger(
                url=url.replace(SERVICE_URL, engine.api_url).replace(
                    TENANT_PLACEHOLDER, tenant(engine)
                ),
                token=secrets[(ref["name"], ref["key"])],
                location=meta["valueLocation"],
                target=float(meta["targetValue"]),
                activation=float(meta.get("activationTargetValue", "0")),
            )
        self.min = int(self.scaled["spec"].get("minReplicaCount", 0))
        self.max = int(self.scaled["spec"].get("maxReplicaCount", 100))

    def metrics(self) -> dict[str, float]:
        return {location: t.metric() for location, t in self.triggers.items()}

    def replicas(self) -> int:
        asks = []
        for trigger in self.triggers.values():
            value = trigger.metric()
            if value > trigger.activation:
                asks.append(math.ceil(value / trigger.target))
        if not asks:
            return self.min
        return max(max(self.min, 1), min(self.max, max(asks)))


def test_gjson_paths_as_keda_reads_them() -> None:
    doc = {"a.b": {"queued": {"total": 3}}, "list": [{"x": 1}]}
    assert gjson_get(doc, "a\\.b.queued.total") == 3
    assert gjson_get(doc, "list.0.x") == 1
    with pytest.raises(KeyError):
        gjson_get(doc, "missing.queued.total")
    with pytest.raises(ValueError):
        gjson_get(doc, "list.#.x")


def test_keda_scales_the_worker_with_the_queue_from_zero_to_max_and_back(
    engine: EngineThread, client: Hewer, in_process_worker: Any
) -> None:
    # What KEDA holds: a read-only token (the manifests' Secret hewer-read-token).
    read_token = scoped_token(engine, Scope.READ, "keda")
    keda = Keda(engine, {("hewer-read-token", "token"): read_token})
    # The task the triggers watch: the one they name in taskNames (zeros while idle).
    (task_name,) = {parse_qs(urlsplit(t.url).query)["taskNames"][0] for t in keda.triggers.values()}
    queued, running = f"{task_name}.queued.total", f"{task_name}.running.total"
    assert set(keda.triggers) == {queued, running}
    per_worker = keda.triggers[queued].target
    gate = threading.Event()

    @client.task(name=task_name)
    def process(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        if input.get("hold"):
            gate.wait(30)
        return {"i": input["i"]}

    worker = in_process_worker(client, [process], slots=int(per_worker), name="keda-worker")
    # Nothing queued or running: the named task reads 0, so KEDA can scale from (and to) zero.
    assert keda.metrics() == {queued: 0, running: 0} and keda.replicas() == 0

    # The worker is paused, so what is triggered stays queued and the target grows with it.
    client.workers.pause(worker.id)
    refs = [process.run_no_wait({"i": i}) for i in range(20)]
    wait_for(lambda: keda.metrics()[queued] == 20, what="20 queued")
    assert keda.replicas() == math.ceil(20 / per_worker) == 3
    refs += [process.run_no_wait({"i": i}) for i in range(20, 120)]
    wait_for(lambda: keda.metrics()[queued] == 120, what="120 queued")
    assert keda.replicas() == keda.max == 10

    # Resumed, the worker drains the queue and the target falls back to zero.
    client.workers.resume(worker.id)
    assert sorted(r.result()["i"] for r in refs) == list(range(120))
    wait_for(lambda: keda.metrics() == {queued: 0, running: 0}, what="the queue drained")
    assert keda.replicas() == 0

    # Busy with nothing queued (the workers keep up), the running trigger keeps a worker:
    # scaling it in would stop tasks it holds.
    held = [process.run_no_wait({"i": i, "hold": True}) for i in range(3)]
    wait_for(lambda: keda.metrics() == {queued: 0, running: 3}, what="three held tasks running")
    assert keda.replicas() == 1
    gate.set()
    for ref in held:
        ref.result()
    wait_for(lambda: keda.metrics() == {queued: 0, running: 0}, what="the held tasks done")
    assert keda.replicas() == 0
