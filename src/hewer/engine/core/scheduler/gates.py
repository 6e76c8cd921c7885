"""Concurrency gates: at most ``max_runs`` holders per (tenant, gate, key), the strategies
for a newcomer that finds its key full, and keys taking turns (GROUP_ROUND_ROBIN)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hewer.domain import ConcurrencyStrategy, GateClaim, QueueItem

GateId = tuple[str, str, str]  # (tenant id, gate, key)
CancelFn = Callable[[str, list[str], str], None]  # tenant id, holder names, reason


@dataclass(slots=True)
class _GateKey:
    """Holders of one concurrency key (insertion order = admission order) and the items
    waiting for it, oldest first."""

    holders: dict[str, None] = field(default_factory=dict)
    waiting: deque[QueueItem] = field(default_factory=deque)


def _gate_id(claim: GateClaim) -> GateId:
    return (claim.tenant_id, claim.gate, claim.key)


def claim_for(item: QueueItem, gate: str) -> GateClaim:
    return next(c for c in item.gates if c.gate == gate)


class Gates:
    def __init__(self, cancel: CancelFn, is_live: Callable[[QueueItem], bool]) -> None:
        self._cancel = cancel
        self._is_live = is_live
        self._gates: dict[GateId, _GateKey] = {}
        # Per (tenant, gate): keys with waiting items, in round-robin order.
        self._turns: dict[tuple[str, str], dict[str, None]] = {}
        self._held_by: dict[str, set[GateId]] = {}
        # Items waiting at a key, per queue (counted against the queue's window).
        self.waiting: Counter[tuple[str, str]] = Counter()

    def hold(self, holder: str, gate_id: GateId) -> None:
        self._gates.setdefault(gate_id, _GateKey()).holders[holder] = None
        self._held_by.setdefault(holder, set()).add(gate_id)

    def hold_claims(self, claims: Iterable[GateClaim]) -> None:
        for claim in claims:
            self.hold(claim.holder, _gate_id(claim))

    def release(self, holders: Iterable[str]) -> bool:
        """Runs or tasks that no longer hold their keys; True if any key got room."""
        freed = False
        for holder in holders:
            for gate_id in self._held_by.pop(holder, ()):
                if (gk := self._gates.get(gate_id)) is not None:
                    gk.holders.pop(holder, None)
                    freed = True
                    self._drop_if_idle(gate_id, gk)
        return freed

    def _drop_if_idle(self, gate_id: GateId, gk: _GateKey) -> None:
        if not gk.holders and not gk.waiting:
            del self._gates[gate_id]

    def _admissible(self, item: QueueItem) -> bool:
        for claim in item.gates:
            gk = self._gates.get(_gate_id(claim))
            held = gk.holders if gk is not None else {}
            if claim.holder not in held and len(held) >= claim.max_runs:
                return False
        return True

    def arrive(self, item: QueueItem) -> bool | None:
        """Apply each limit's strategy to a newcomer: True if it may go straight on, False
        if it waits at its first key, None if it was refused (cancelled)."""
        for claim in item.gates:
            gk = self._gates.setdefault(_gate_id(claim), _GateKey())
            if claim.holder in gk.holders or len(gk.holders) < claim.max_runs:
                continue
            tenant = claim.tenant_id
            match claim.strategy:
                case ConcurrencyStrategy.CANCEL_NEWEST:
                    self._cancel(
                        tenant, [claim.holder], "concurrency limit reached (CANCEL_NEWEST)"
                    )
                    return None
                case ConcurrencyStrategy.CANCEL_IN_PROGRESS:
                    excess = len(gk.holders) - claim.max_runs + 1
                    oldest = list(gk.holders)[:excess]
                    ids = oldest + self._take_waiting(gk, claim.gate)
                    self._cancel(tenant, ids, "superseded by a newer run (CANCEL_IN_PROGRESS)")
                case ConcurrencyStrategy.CANCEL_QUEUED_EXCEPT_NEWEST:
                    ids = self._take_waiting(gk, claim.gate)
                    if ids:
                        reason = "superseded by a newer queued run (CANCEL_QUEUED_EXCEPT_NEWEST)"
                        self._cancel(tenant, ids, reason)
                case ConcurrencyStrategy.CANCEL_QUEUED_EXCEPT_OLDEST:
                    if any(self._is_live(w) for w in gk.waiting):
                        reason = "an older run is already queued (CANCEL_QUEUED_EXCEPT_OLDEST)"
                        self._cancel(tenant, [claim.holder], reason)
                        return None
                case ConcurrencyStrategy.GROUP_ROUND_ROBIN:
                    pass
        if self._admissible(item) and not self._waiting_ahead(item):
            self._admit(item)
            return True
        first = item.gates[0]
        self._gates.setdefault(_gate_id(first), _GateKey()).waiting.append(item)
        self.waiting[(item.tenant_id, item.action_id)] += 1
        self._turns.setdefault((first.tenant_id, first.gate), {})[first.key] = None
        return False

    def _take_waiting(self, gk: _GateKey, gate: str) -> list[str]:
        waiting = [w for w in gk.waiting if self._is_live(w)]
        for w in gk.waiting:
            self.waiting[(w.tenant_id, w.action_id)] -= 1
        gk.waiting.clear()
        return [claim_for(w, gate).holder for w in waiting]

    def _waiting_ahead(self, item: QueueItem) -> bool:
        """Whether older items wait for the same first key (FIFO within a key)."""
        first = item.gates[0]
        gk = self._gates.get(_gate_id(first))
        return (
            gk is not None
            and first.holder not in gk.holders
            and any(self._is_live(w) for w in gk.waiting)
        )

    def _admit(self, item: QueueItem) -> None:
        for claim in item.gates:
            self.hold(claim.holder, _gate_id(claim))

    def admit_waiting(self, release: Callable[[QueueItem], None], budget: int) -> None:
        """Let waiting items in while their keys have room, keys taking turns; at most
        ``budget`` of them (a pass places no more than that anyway)."""
        for turn_id, keys in list(self._turns.items()):
            tenant, gate = turn_id
            progress = True
            while progress and keys and budget > 0:
                progress = False
                for key in list(keys):
                    if budget <= 0:
                        break
                    gk = self._gates.get((tenant, gate, key))
                    while gk is not None and gk.waiting and not self._is_live(gk.waiting[0]):
                        dead = gk.waiting.popleft()
                        self.waiting[(dead.tenant_id, dead.action_id)] -= 1
                    if gk is None or not gk.waiting:
                        keys.pop(key, None)
                        if gk is not None:
                            self._drop_if_idle((tenant, gate, key), gk)
                        continue
                    head = gk.waiting[0]
                    if not self._admissible(head):
                        continue
                    gk.waiting.popleft()
                    self.waiting[(head.tenant_id, head.action_id)] -= 1
                    self._admit(head)
                    release(head)
                    budget -= 1
                    # Round robin: this key goes to the back of the line.
                    keys.pop(key, None)
                    keys[key] = None
                    progress = True
            if not keys:
                del self._turns[turn_id]

    def holders(self) -> dict[GateId, int]:
        return {gid: len(gk.holders) for gid, gk in self._gates.items() if gk.holders}

    def clear(self) -> None:
        self._gates.clear()
        self._turns.clear()
        self._held_by.clear()
        self.waiting.clear()
