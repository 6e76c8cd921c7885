"""API tokens: JWTs signed with the installation's secret, looked up by id so they can be revoked.

The claims are what ``hatchet-sdk`` requires (``sub`` = tenant id, ``server_url``,
``grpc_broadcast_address``) plus ``token_id``, ``iat`` and ``exp``.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass

import jwt

from hewer.domain import ApiToken
from hewer.engine.core.clock import Clock
from hewer.engine.core.scopes import Scope, parse_scope
from hewer.errors import HewerError, InvalidInput, StoreError
from hewer.store import Store

SECRET_KEY = "jwt_secret"
ISSUER = "hewer"
ALGORITHM = "HS256"
# A validated token is trusted this long before its row is read again, so a revocation
# takes effect within this window without a database read on every call (one read per
# token per window, however many calls and streams use it).
CACHE_SECONDS = 2.0
# How often an open stream checks its token again: a revoked or expired token loses its
# streams within this plus CACHE_SECONDS (under a worker's heartbeat interval of 4 s).
STREAM_RECHECK_SECONDS = 1.0
# How long a token checked before waits for the database to check it again.
RECHECK_TIMEOUT_SECONDS = 1.0


class Unauthenticated(HewerError):
    """The caller sent no token, or one that is invalid, expired or revoked."""


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    token_id: str
    scope: Scope = Scope.ADMIN


class TokenAuthority:
    """Mints and checks tokens for one installation."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._secret: str | None = None
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def load(self) -> None:
        self._secret = await self._store.meta_get_or_set(SECRET_KEY, secrets.token_hex(32))

    @property
    def secret(self) -> str:
        if self._secret is None:
            raise HewerError("token authority not loaded")
        return self._secret

    async def mint(
        self,
        tenant_id: str,
        name: str,
        ttl_seconds: float,
        *,
        server_url: str,
        grpc_address: str,
        scope: Scope = Scope.ADMIN,
    ) -> str:
        """A new token; the addresses are where clients holding it will connect, the scope
        what it may do (:mod:`hewer.engine.core.scopes`)."""
        now = self._clock.now()
        token_id = str(uuid.uuid4())
        expires = now + ttl_seconds
        await self._store.token_insert(ApiToken(token_id, tenant_id, name, now, expires, None))
        claims = {
            "sub": tenant_id,
            "iss": ISSUER,
            "iat": int(now),
            "exp": int(expires),
            "token_id": token_id,
            "server_url": server_url,
            "grpc_broadcast_address": grpc_address,
            "scope": scope.value,
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    async def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        now = self._clock.now()
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["sub", "exp", "token_id"], "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid auth token: {exc}") from exc
        # Expiry is judged on the injected clock, like every other engine decision.
        if float(claims["exp"]) <= now:
            raise Unauthenticated("invalid auth token: expired")
        lookup = self._store.token_get(str(claims["token_id"]))
        if cached is None:
            row = await lookup
        else:
            try:
                async with asyncio.timeout(RECHECK_TIMEOUT_SECONDS):
                    row = await lookup
            except (StoreError, TimeoutError):
                # The database does not answer: a token this engine checked before still
                # holds (a revocation takes effect once it answers again), so workers keep
                # heartbeating through an outage. Its expiry was checked above, on its
                # claims. An unknown token cannot be checked: that one is refused.
                return cached[0]
        if row is None or row.revoked_at is not None or row.tenant_id != claims["sub"]:
            raise Unauthenticated("invalid auth token: revoked or unknown")
        scope = claims.get("scope")
        try:
            parsed = parse_scope(scope if isinstance(scope, str) or scope is None else str(scope))
        except InvalidInput as exc:
            raise Unauthenticated(f"invalid auth token: {exc}") from None
        principal = Principal(tenant_id=row.tenant_id, token_id=row.id, scope=parsed)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (principal, min(now + CACHE_SECONDS, row.expires_at))
        return principal


def bearer(header_value: str | None) -> str:
    """The token in an ``authorization`` header value (``bearer <token>``, any case)."""
    if not header_value:
        raise Unauthenticated("missing authorization metadata (expected 'bearer <token>')")
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization metadata must be 'bearer <token>'")
    return token.strip()


def unverified_claims(token: str) -> dict[str, object]:
    """Claims of a token without checking its signature (for clients reading the address)."""
    claims: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return claims
