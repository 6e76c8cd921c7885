"""Token and address resolution, and channel settings."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from hewer import ClientSettings, ConfigurationError, Hewer
from hewer.sdk._connection import (
    host_of,
    is_local,
    resolve_connection,
    resolve_token,
    token_claims,
)


def make_token(**claims: Any) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(claims)}.signature"


def settings(tmp_path: Path, **values: Any) -> ClientSettings:
    return ClientSettings(state_dir=tmp_path, **values)


@pytest.mark.parametrize(
    ("address", "host", "local"),
    [
        ("127.0.0.1:7070", "127.0.0.1", True),
        ("localhost:7070", "localhost", True),
        ("LOCALHOST:1", "LOCALHOST", True),
        ("[::1]:7070", "::1", True),
        ("::1", "::1", True),
        ("engine.example.com:443", "engine.example.com", False),
        ("10.0.0.5:7070", "10.0.0.5", False),
    ],
)
def test_host_parsing(address: str, host: str, local: bool) -> None:
    assert host_of(address) == host
    assert is_local(address) is local


def test_claims_are_decoded_without_verification() -> None:
    token = make_token(sub="tenant", grpc_broadcast_address="h:1", server_url="http://h")
    assert token_claims(token) == {
        "sub": "tenant",
        "grpc_broadcast_address": "h:1",
        "server_url": "http://h",
    }
    assert token_claims("opaque-token") == {}
    assert token_claims("a.!!!.c") == {}


def test_explicit_token_wins(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file")
    assert resolve_token(settings(tmp_path, token=" explicit\n")) == "explicit"


def test_token_file_is_used_for_a_local_engine(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    assert resolve_token(settings(tmp_path)) == "from-file"
    assert resolve_token(settings(tmp_path, host_port="127.0.0.1:7070")) == "from-file"
    assert resolve_token(settings(tmp_path, host_port="[::1]:7070")) == "from-file"


def test_token_file_is_not_used_for_a_remote_engine(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file")
    with pytest.raises(ConfigurationError, match="HEWER_TOKEN"):
        resolve_token(settings(tmp_path, host_port="engine.example.com:7070"))


def test_missing_token_file_names_the_env_var(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="HEWER_TOKEN") as info:
        resolve_token(settings(tmp_path))
    assert str(tmp_path / "token") in str(info.value)


def test_empty_token_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  \n")
    with pytest.raises(ConfigurationError, match="empty"):
        resolve_token(settings(tmp_path))


def test_address_comes_from_the_token_claim(tmp_path: Path) -> None:
    token = make_token(sub="t1", grpc_broadcast_address="engine:7070", server_url="x")
    conn = resolve_connection(settings(tmp_path, token=token))
    assert conn.address == "engine:7070"
    assert conn.tenant_id == "t1"
    assert conn.metadata == (("authorization", f"bearer {token}"),)


def test_host_port_overrides_the_claim(tmp_path: Path) -> None:
    token = make_token(sub="t1", grpc_broadcast_address="engine:7070", server_url="x")
    conn = resolve_connection(settings(tmp_path, token=token, host_port="other:1"))
    assert conn.address == "other:1"


def test_no_address_anywhere_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="HEWER_HOST_PORT"):
        resolve_connection(settings(tmp_path, token="opaque"))


def test_local_token_file_end_to_end(tmp_path: Path) -> None:
    token = make_token(sub="t", grpc_broadcast_address="127.0.0.1:7171", server_url="x")
    (tmp_path / "token").write_text(token)
    conn = resolve_connection(settings(tmp_path))
    assert (conn.token, conn.address) == (token, "127.0.0.1:7171")


def test_channel_options(tmp_path: Path) -> None:
    conn = resolve_connection(
        settings(tmp_path, token="t", host_port="h:1", max_message_bytes=1234)
    )
    options = dict(conn.channel_options())
    assert options["grpc.keepalive_time_ms"] == 4_000
    # gRPC core waits this long for a ping's answer (keepalive_timeout_ms alone is not it).
    assert options["grpc.http2.ping_timeout_ms"] == 4_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_send_message_length"] == 1234
    assert options["grpc.max_receive_message_length"] == 1234


def test_client_resolves_lazily(tmp_path: Path) -> None:
    # Building a client (say at import time) must not fail for lack of a token...
    hw = Hewer(settings=settings(tmp_path))
    # ...only using it does.
    with pytest.raises(ConfigurationError, match="HEWER_TOKEN"):
        _ = hw.connection


def test_client_keyword_overrides(tmp_path: Path) -> None:
    hw = Hewer(settings=settings(tmp_path), token="tok", host_port="h:2", namespace="Ns")
    assert hw.settings.token == "tok"
    assert hw.connection.address == "h:2"
    assert hw.namespace == "ns_"


def test_client_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEWER_TOKEN", "env-token")
    monkeypatch.setenv("HEWER_HOST_PORT", "env-host:9")
    monkeypatch.setenv("HEWER_NAMESPACE", "prod")
    hw = Hewer()
    assert hw.connection.token == "env-token"
    assert hw.connection.address == "env-host:9"
    assert hw.namespace == "prod_"
