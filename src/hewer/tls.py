"""TLS material for the engine's listeners and for clients, read from PEM files.

Unreadable or malformed files are configuration errors naming the file and the setting, so
a mistake shows as one line at start, not as a handshake failure later.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from hewer.errors import ConfigurationError


def read_pem(path: Path, setting: str) -> bytes:
    """The bytes of a PEM file; ConfigurationError if it cannot be read or holds no PEM."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigurationError(f"{setting}: {path} holds no PEM data")
    return data


def check_pair(cert: Path, key: Path, cert_setting: str, key_setting: str) -> None:
    """Refuse a certificate and key that do not load together (the error names both)."""
    read_pem(cert, cert_setting)
    read_pem(key, key_setting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigurationError(
            f"{cert_setting} {cert} and {key_setting} {key} do not load as a certificate and "
            f"its key: {exc}"
        ) from None


def check_ca(path: Path, setting: str) -> None:
    """Refuse a CA bundle that does not load."""
    read_pem(path, setting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(path))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigurationError(f"{setting}: {path} is not a CA bundle: {exc}") from None


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """gRPC server credentials; with ``client_ca``, clients must present a certificate it
    signed."""
    return grpc.ssl_server_credentials(
        [(read_pem(key, "HEWER_TLS_KEY"), read_pem(cert, "HEWER_TLS_CERT"))],
        root_certificates=read_pem(client_ca, "HEWER_TLS_CLIENT_CA") if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    root_ca: Path | None,
    cert: Path | None,
    key: Path | None,
    *,
    settings: tuple[str, str, str],
) -> grpc.ChannelCredentials:
    """gRPC channel credentials: trust ``root_ca`` (None: the system's roots), and present
    ``cert``/``key`` when given (mTLS). ``settings`` names the three for errors."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(root_ca, settings[0]) if root_ca else None,
        private_key=read_pem(key, settings[2]) if key else None,
        certificate_chain=read_pem(cert, settings[1]) if cert else None,
    )


def client_context(root_ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """An ``ssl`` client context for HTTPS calls with the same trust and identity."""
    context = ssl.create_default_context(cafile=str(root_ca) if root_ca else None)
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context
