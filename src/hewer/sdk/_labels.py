"""A worker's labels: what Register sends, and what ``upsert_labels`` changes at run time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from hewer.errors import HewerError
from hewer.sdk._controls import LabelValue, check_worker_labels

logger = logging.getLogger(__name__)

Sender = Callable[[Mapping[str, LabelValue]], None]


class WorkerLabelSet:
    """Labels of one worker, shared by its registration, ``worker.upsert_labels`` and
    ``ctx.upsert_worker_labels`` (from any thread).

    One lock covers the local merge and the call telling the engine, so concurrent upserts
    reach the engine in the order they were merged. Labels merged while the worker is not
    registered are kept and go out with the next registration.
    """

    def __init__(self, labels: Mapping[str, object] | None = None) -> None:
        self._lock = threading.Lock()
        self._labels = check_worker_labels(labels)
        self._version = 0
        self._send: Sender | None = None

    def snapshot(self) -> tuple[dict[str, LabelValue], int]:
        """The labels now, and a version to hand to ``connect`` after registering them."""
        with self._lock:
            return dict(self._labels), self._version

    @property
    def labels(self) -> dict[str, LabelValue]:
        """A copy of the labels now."""
        return self.snapshot()[0]

    def connect(self, send: Sender, since: int) -> None:
        """Tell the engine about later upserts through ``send``. Blocking.

        ``since`` is the version of the labels the registration carried: if upserts landed
        in between, everything is sent at once so the engine does not miss them.
        """
        with self._lock:
            self._send = send
            if self._version == since:
                return
            try:
                send(dict(self._labels))
            except HewerError as exc:
                logger.warning("could not update worker labels after registering: %s", exc)

    def disconnect(self) -> None:
        """Stop telling the engine (the worker stopped); later upserts are kept locally."""
        with self._lock:
            self._send = None

    def upsert(self, labels: Mapping[str, object]) -> None:
        """Add or change labels; tells the engine when registered (blocking). Raises
        HewerError if the engine cannot be told (the labels are kept locally and reach the
        engine with the next registration)."""
        checked = check_worker_labels(labels)
        if not checked:
            return
        with self._lock:
            self._labels.update(checked)
            self._version += 1
            if self._send is not None:
                self._send(checked)
