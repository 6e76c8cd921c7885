"""TLS and mTLS on both ports (reliability reference S7), with certificates made at test
time: our SDK (worker, triggers, REST) and the unmodified hatchet-sdk connect; plaintext
clients, clients without a certificate and clients with another CA's are refused."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from hewer import Context, Hewer
from hewer._proto import dispatcher_pb2, dispatcher_pb2_grpc
from hewer.testing import EngineThread
from tests.certs import Authority, Issued, authority
from tests.compat._hatchet import hatchet_worker, run_client
from tests.compat.test_hatchet_sdk import hatchet_env
from tests.conftest import HEARTBEAT

HATCHET_APP = Path(__file__).resolve().parents[1] / "compat" / "hatchet_app.py"


class Pki:
    def __init__(self, root: Path) -> None:
        self.ca: Authority = authority(root, "hewer")
        self.server: Issued = self.ca.issue(root, "engine", server=True, client=True)
        self.client: Issued = self.ca.issue(root, "client", client=True)
        self.other_ca: Authority = authority(root / "other", "other")
        self.stranger: Issued = self.other_ca.issue(root / "other", "stranger", client=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(params=["tls", "mtls"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(tmp_path: Path, pki: Pki, mode: str) -> Iterator[EngineThread]:
    settings: dict[str, Any] = {"tls_cert": pki.server.cert, "tls_key": pki.server.key}
    if mode == "mtls":
        settings["tls_client_ca"] = pki.ca.cert
    with EngineThread(
        tmp_path, heartbeat_interval=HEARTBEAT, inactive_after=1.5, **settings
    ) as running:
        yield running


def _client(engine: EngineThread, pki: Pki, mode: str) -> Hewer:
    extra: dict[str, Any] = {"tls_root_ca_file": pki.ca.cert}
    if mode == "mtls":
        extra.update(tls_cert_file=pki.client.cert, tls_key_file=pki.client.key)
    return Hewer(settings=engine.client_settings(heartbeat_interval=HEARTBEAT, **extra))


def _reaches(channel: grpc.Channel) -> bool:
    """Whether a call gets through the handshake (without a token it is then refused
    UNAUTHENTICATED by the engine itself); a failed handshake is UNAVAILABLE."""
    stub = dispatcher_pb2_grpc.DispatcherStub(channel)
    try:
        stub.GetVersion(dispatcher_pb2.GetVersionRequest(), timeout=5)
    except grpc.RpcError as exc:
        code = exc.code()
        assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE), exc
        return code is grpc.StatusCode.UNAUTHENTICATED
    return True


def _secure(engine: EngineThread, pki: Pki, identity: Issued | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert.read_bytes(),
        private_key=identity.key.read_bytes() if identity else None,
        certificate_chain=identity.cert.read_bytes() if identity else None,
    )
    return grpc.secure_channel(engine.address, credentials)


def test_our_sdk_runs_tasks_and_reads_rest_over_tls(
    engine: EngineThread, pki: Pki, mode: str
) -> None:
    assert engine.api_url.startswith("https://")
    hw = _client(engine, pki, mode)

    @hw.task(name="tls-double")
    def double(input: dict[str, Any], ctx: Context) -> dict[str, int]:
        return {"y": input["x"] * 2}

    worker = hw.worker("tls-worker", slots=2, workflows=[double])
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(20), "the worker did not connect over TLS"
        assert double.run({"x": 21}) == {"y": 42}
        # The REST half: the same trust (and certificate) over HTTPS.
        assert [w.name for w in hw.workers.list()] == ["tls-worker"]
    finally:
        worker.stop()
        thread.join(20)
        hw.close()


def test_clients_that_do_not_speak_its_tls_are_refused(
    engine: EngineThread, pki: Pki, mode: str
) -> None:
    with grpc.insecure_channel(engine.address) as plain:
        assert not _reaches(plain)
    with _secure(engine, pki, pki.client) as good:
        assert _reaches(good)
    with _secure(engine, pki, None) as anonymous:
        assert _reaches(anonymous) is (mode == "tls"), "mTLS wants a client certificate"
    with _secure(engine, pki, pki.stranger) as stranger:
        assert _reaches(stranger) is (mode == "tls"), "mTLS wants one its CA signed"

    # HTTP: plaintext is not answered; HTTPS with the CA is, and under mTLS only with a
    # certificate the client CA signed.
    with pytest.raises(httpx.HTTPError):
        httpx.get(engine.api_url.replace("https://", "http://") + "/health", trust_env=False)

    def https(identity: Issued | None) -> int:
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        if identity is not None:
            context.load_cert_chain(str(identity.cert), str(identity.key))
        with httpx.Client(verify=context, trust_env=False, timeout=5) as client:
            return client.get(engine.api_url + "/health").status_code

    assert https(pki.client) == 200
    if mode == "mtls":
        for identity in (None, pki.stranger):
            with pytest.raises((httpx.HTTPError, ssl.SSLError)):
                https(identity)
    else:
        assert https(None) == 200


def test_hatchet_sdk_worker_and_client_over_tls(
    engine: EngineThread, pki: Pki, mode: str, tmp_path: Path
) -> None:
    env = hatchet_env(engine)
    env.update(
        HATCHET_CLIENT_TLS_STRATEGY=mode,
        HATCHET_CLIENT_TLS_ROOT_CA_FILE=str(pki.ca.cert),
        HATCHET_CLIENT_TLS_SERVER_NAME="localhost",
    )
    if mode == "mtls":
        env.update(
            HATCHET_CLIENT_TLS_CERT_FILE=str(pki.client.cert),
            HATCHET_CLIENT_TLS_KEY_FILE=str(pki.client.key),
        )
    with hatchet_worker(engine, tmp_path, HATCHET_APP, "compat-worker", env=env):
        out = run_client(engine, tmp_path, HATCHET_APP, env=env)
    assert out["double"] == {"y": 42}
    assert out["dag"] == {"first": {"a": 2}, "second": {"b": 20}}
