"""``hw.runs``: runs addressed by workflow name and run id, without a task handle."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from hewer.sdk import _admin, _serde, _trigger
from hewer.sdk._core import ClientCore
from hewer.sdk._options import TriggerKwargs
from hewer.sdk._runs import run_outputs
from hewer.sdk._task import RunRef


class Runs:
    """Trigger a workflow by name and wait for runs by id (e.g. from the CLI)."""

    def __init__(self, client: ClientCore) -> None:
        self._client = client

    def _request(
        self, workflow: str, input: Mapping[str, Any] | None, options: TriggerKwargs
    ) -> Any:
        return _trigger.trigger_request(
            self._client.namespaced(workflow), _serde.dumps(dict(input or {})), options
        )

    def trigger(
        self,
        workflow: str,
        input: Mapping[str, Any] | None = None,
        **options: Unpack[TriggerKwargs],
    ) -> RunRef[dict[str, Any]]:
        """Start a run of ``workflow``; its result is ``{task name: output}``.

        Options as the run methods of a task: ``additional_metadata``, ``priority``,
        ``desired_worker_labels``, ``sticky`` (from inside a task only).
        """
        request = self._request(workflow, input, options)
        return RunRef(self._client._runs.trigger(request), self._client, run_outputs)

    async def aio_trigger(
        self,
        workflow: str,
        input: Mapping[str, Any] | None = None,
        **options: Unpack[TriggerKwargs],
    ) -> RunRef[dict[str, Any]]:
        """Start a run of ``workflow``; its result is ``{task name: output}``."""
        request = self._request(workflow, input, options)
        return RunRef(await self._client._runs.aio_trigger(request), self._client, run_outputs)

    def get(self, run_id: str) -> _admin.RunInfo:
        """A run with its tasks: status, input, outputs, errors, attempts and times
        (NotFound for a run the tenant does not have)."""
        return _admin.run_info(self._client, run_id)

    async def aio_get(self, run_id: str) -> _admin.RunInfo:
        """A run with its tasks; see :meth:`get`."""
        return await asyncio.to_thread(_admin.run_info, self._client, run_id)

    def get_status(self, run_id: str) -> str:
        """QUEUED, RUNNING, COMPLETED, FAILED or CANCELLED."""
        return _admin.run_status(self._client, run_id)

    async def aio_get_status(self, run_id: str) -> str:
        """The run's status; see :meth:`get_status`."""
        return await asyncio.to_thread(_admin.run_status, self._client, run_id)

    def ref(self, run_id: str) -> RunRef[dict[str, Any]]:
        """A handle on an existing run, to wait for its result."""
        return RunRef(run_id, self._client, run_outputs)

    def cancel(
        self,
        ids: str | Sequence[str] | None = None,
        *,
        filter: _admin.RunFilter | None = None,
    ) -> list[str]:
        """Cancel runs (or single tasks) by id, or every run matching ``filter``; returns
        the ids of the tasks cancelled. Unknown or finished runs cancel nothing. Workers
        running a cancelled task are told to stop it."""
        return _admin.cancel(self._client, ids, filter)

    async def aio_cancel(
        self,
        ids: str | Sequence[str] | None = None,
        *,
        filter: _admin.RunFilter | None = None,
    ) -> list[str]:
        """Cancel runs by id or filter; see :meth:`cancel`."""
        return await _admin.aio_cancel(self._client, ids, filter)
