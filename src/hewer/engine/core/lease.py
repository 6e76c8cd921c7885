"""The scheduling lease: which of several engine replicas over one database schedules.

One replica at a time holds the lease; it runs the engine core (the one writer, the
scheduler, liveness), and the others relay their callers to it. The lease has a term on the
database's clock and a fencing token that grows at every change of hands. The holder renews
the term in the background; when the term runs out (the holder died, paused or lost the
database) another replica takes the lease with the next token. The holder's write
transactions check its token first, so one that lost the lease cannot commit a decision
afterwards, however late it wakes up; it learns of the loss from its next renewal (or from a
refused write) and steps down. A clean shutdown ends the term at once.

The keeper only keeps the lease and says who holds it. What a replica does on gaining or
losing it is up to its owner, which follows ``token`` (see :meth:`LeaseKeeper.changed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Protocol

from hewer.domain import LeaseState, ReplicaRecord
from hewer.engine.core.clock import Clock
from hewer.engine.core.component import Component
from hewer.errors import HewerError, StoreError

logger = logging.getLogger(__name__)

SCHEDULER_LEASE = "scheduler"
# Set on every relayed call (gRPC metadata, HTTP header): a replica that does not schedule
# refuses a call that carries it rather than pass it on again (two replicas each taking the
# other for the holder, a replica host naming a load balancer), which would chain streams
# without end.
RELAYED_HEADER = "x-hewer-relayed"


class LeaseStore(Protocol):
    async def lease_claim(
        self, lease: str, holder: str, grpc_address: str, api_address: str, ttl_s: float
    ) -> int | None: ...
    async def lease_renew(self, lease: str, token: int, ttl_s: float) -> bool: ...
    async def lease_release(self, lease: str, token: int) -> None: ...
    async def lease_get(self, lease: str) -> LeaseState | None: ...
    async def replica_seen(
        self, replica_id: str, grpc_address: str, api_address: str, scheduling: bool, fresh: bool
    ) -> None: ...
    async def replica_gone(self, replica_id: str) -> None: ...
    async def replicas_list(self) -> list[ReplicaRecord]: ...


class LeaseKeeper(Component):
    """Claims the lease when it is free, renews it while held, and tracks the holder.

    ``ttl``: the lease's term; renewals and claims are tried every ``ttl / 5``, so a dead
    holder's lease is taken over at most ``ttl + ttl / 5`` after its last renewal. A holder
    that cannot renew within its term (by its own clock, counted from the moment it asked)
    gives the lease up on its side too if other replicas were alive (one of them takes over,
    so its workers had better move there now); alone, it keeps scheduling through the
    outage, since nobody else could. Fencing makes either choice safe.
    """

    def __init__(
        self,
        store: LeaseStore,
        clock: Clock,
        *,
        replica_id: str,
        grpc_address: str,
        api_address: str,
        ttl: float,
        lease: str = SCHEDULER_LEASE,
    ) -> None:
        if ttl <= 0:
            raise HewerError("the lease term must be positive")
        self.store = store
        self.clock = clock
        self.replica_id = replica_id
        self.grpc_address = grpc_address
        self.api_address = api_address
        self.ttl = ttl
        self.interval = ttl / 5
        self.lease = lease
        self.token: int | None = None
        """The fencing token while this replica holds the lease, else None."""
        self.holder: LeaseState | None = None
        """The lease as last read while another replica holds it (None: nobody does)."""
        self._valid_until = 0.0
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fresh = True
        self._others_alive = False

    # -- what owners use ------------------------------------------------------------------

    async def changed(self) -> None:
        """Wait until ``token`` or ``holder`` changes."""
        await self._changed.wait()

    def watch(self) -> asyncio.Event:
        """An event set at the next change (take it before looking at the state, so that a
        change made meanwhile is not missed)."""
        return self._changed

    async def give_up(self) -> None:
        """Hand the lease over now while staying up (this replica could not take up
        scheduling); it may be claimed again, by this replica too, at a later round."""
        token = self.token
        if token is None:
            return
        self._set(None, None)
        try:
            await self.store.lease_release(self.lease, token)
        except StoreError as exc:
            logger.warning("could not hand the scheduling lease over: %s", exc)

    def poke(self) -> None:
        """Look at the lease again now (a relayed call found the holder unreachable)."""
        self._poke.set()

    def fenced(self) -> None:
        """A write was refused on the token: the lease is gone, whatever the clock says."""
        if self.token is not None:
            logger.warning("scheduling lease lost (a write was fenced off)")
            self._set(None, None)
        self._poke.set()

    async def wait_holder(self, *, within: float) -> LeaseState | None:
        """The replica that schedules, waiting up to ``within`` s for one to appear."""
        deadline = self.clock.monotonic() + within
        while self.token is None and (self.holder is None or not self.holder.live):
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return None
            self._poke.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed(), min(remaining, self.interval))
        return self.holder if self.token is None else None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """One round first (so the owner knows at once whether it schedules), then the rest
        in the background."""
        if self._task is not None:
            return
        await self._round()
        self._task = asyncio.create_task(self._forever(), name="hewer-lease")

    async def stop(self, grace: float = 0.0) -> None:
        """Stop renewing; the owner has stopped scheduling before, so end the term now and
        let the next replica take over at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        token = self.token
        if token is not None:
            self._set(None, None)
            try:
                await self.store.lease_release(self.lease, token)
                logger.info("scheduling lease handed over (token %d)", token)
            except StoreError as exc:
                logger.warning("could not hand the scheduling lease over: %s", exc)
        with contextlib.suppress(StoreError):
            await self.store.replica_gone(self.replica_id)

    # -- the rounds -------------------------------------------------------------------------

    async def _forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.interval)
            self._poke.clear()
            try:
                await self._round()
            except Exception:
                logger.exception("lease round failed")

    async def _round(self) -> None:
        asked_at = self.clock.monotonic()
        if self.token is not None and not await self._renew(asked_at):
            # Lost on our side: claim it again before saying so. The very next token for
            # this replica means nobody held it meanwhile, and the owner may go on as is.
            await self._claim(asked_at)
        elif self.token is None:
            await self._claim(asked_at)
        with contextlib.suppress(StoreError):
            await self.store.replica_seen(
                self.replica_id,
                self.grpc_address,
                self.api_address,
                self.token is not None,
                self._fresh,
            )
            self._fresh = False
            if self.token is not None:
                alive = self.ttl * 2
                self._others_alive = any(
                    r.id != self.replica_id and r.seen_ago_s < alive
                    for r in await self.store.replicas_list()
                )

    async def _renew(self, asked_at: float) -> bool:
        """Extend the term; False once the lease is to be taken as lost."""
        token = self.token
        assert token is not None
        try:
            held = await self.store.lease_renew(self.lease, token, self.ttl)
        except StoreError as exc:
            if self.clock.monotonic() < self._valid_until:
                logger.debug("lease renewal failed, term still running: %s", exc)
                return True
            if not self._others_alive:
                logger.debug("lease not renewed (%s); no other replica to take over", exc)
                return True
            logger.warning("scheduling lease expired: could not renew it (%s)", exc)
            return False
        if self.token != token:
            return True  # fenced meanwhile: already given up
        if held:
            self._valid_until = _term_end(asked_at, self.ttl)
            return True
        logger.warning("scheduling lease lost: another replica holds it now")
        return False

    async def _claim(self, asked_at: float) -> None:
        try:
            token = await self.store.lease_claim(
                self.lease, self.replica_id, self.grpc_address, self.api_address, self.ttl
            )
            holder = None if token is not None else await self.store.lease_get(self.lease)
        except StoreError as exc:
            logger.debug("could not look at the scheduling lease: %s", exc)
            # Unknown: relays wait rather than call a stale holder, and a lease this replica
            # had is given up on its side.
            self._set(None, None)
            return
        if token is not None:
            self._valid_until = _term_end(asked_at, self.ttl)
            logger.info("this replica schedules now (lease token %d)", token)
            self._set(token, None)
        else:
            # The time left changes at every read; only a change of hands is news.
            live = None if holder is None or not holder.live else replace(holder, remaining_s=0)
            self._set(None, live)

    def _set(self, token: int | None, holder: LeaseState | None) -> None:
        if token == self.token and holder == self.holder:
            return
        self.token, self.holder = token, holder
        self._changed.set()
        self._changed = asyncio.Event()


def _term_end(asked_at: float, ttl: float) -> float:
    """The end of a term as this replica may count it: from when it asked (the database
    started the term later than that, never earlier), less a margin for clock rates."""
    return asked_at + ttl * 0.9
