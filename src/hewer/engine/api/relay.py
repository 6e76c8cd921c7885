"""The HTTP side of a replica that does not schedule: requests go to the replica that does
(see :mod:`hewer.engine.grpc.relay` for the gRPC side); ``/health``, ``/ready`` and
``/metrics`` answer here (:mod:`hewer.engine.api.ops`)."""

from __future__ import annotations

import logging
import ssl

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from hewer.engine.api._http import error_response
from hewer.engine.api.ops import PATHS as OPS_PATHS
from hewer.engine.core.lease import RELAYED_HEADER, LeaseKeeper

logger = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1) and those the client library sets itself.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
FORWARD_TIMEOUT_S = 30.0


class ApiSwitch:
    """The ASGI app a replica serves: its own REST app while it schedules (``local``),
    else a relay to the replica that does."""

    def __init__(
        self, keeper: LeaseKeeper | None, wait_s: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self.tls = tls
        """Set when the replicas' HTTP ports speak TLS: the trust (and identity) to relay with."""
        self.local: ASGIApp | None = None
        self.ops: ASGIApp | None = None
        """``/health``, ``/ready``, ``/metrics``: answered here whatever the role."""
        self.keeper = keeper
        self.wait_s = wait_s
        self._client: httpx.AsyncClient | None = None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        local = self.local
        if self.ops is not None and scope["type"] == "http" and scope["path"] in OPS_PATHS:
            await self.ops(scope, receive, send)
            return
        if local is not None:
            await local(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        response = await self._relay(Request(scope, receive))
        await response(scope, receive, send)

    async def _relay(self, request: Request) -> Response:
        keeper = self.keeper
        if request.headers.get(RELAYED_HEADER) is not None:
            return _unavailable("relayed to a replica that does not schedule; retry shortly")
        holder = await keeper.wait_holder(within=self.wait_s) if keeper is not None else None
        if keeper is None or holder is None or holder.holder == keeper.replica_id:
            return _unavailable("no engine replica is scheduling right now; retry shortly")
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=FORWARD_TIMEOUT_S, verify=self.tls if self.tls is not None else True
            )
        scheme = "https" if self.tls is not None else "http"
        url = f"{scheme}://{holder.api_address}{request.url.path}"
        if request.url.query:
            url += f"?{request.url.query}"
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        headers.append((RELAYED_HEADER, keeper.replica_id))
        try:
            upstream = await self._client.request(
                request.method, url, headers=headers, content=await request.body()
            )
        except httpx.HTTPError as exc:
            keeper.poke()
            logger.debug("relay to %s failed: %s", url, exc)
            return _unavailable(f"the scheduling replica did not answer ({type(exc).__name__})")
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            # The body comes decoded: its original encoding header no longer applies.
            headers={
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in _HOP and k.lower() != "content-encoding"
            },
        )


def _unavailable(message: str) -> Response:
    return error_response(503, message)
