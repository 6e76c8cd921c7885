"""``ClientCore``: what the SDK's features need of a client, below all of them.

Settings, clock, namespace, the engine connection with its channels, and the run client
(triggering and waiting). ``Hewer`` (``_client``) is a ``ClientCore`` and hands itself to
the features it builds (workflows, workers, ``hw.runs``, ``hw.workers``,
``hw.rate_limits``); they see only this class, so none of them imports ``_client``.
"""

from __future__ import annotations

from hewer.config import ClientSettings
from hewer.sdk._connection import ChannelPool, Connection, resolve_connection
from hewer.sdk._runs import RunClient
from hewer.sdk._time import Clock


def normalize_namespace(namespace: str) -> str:
    """Lowercased, ending in ``_`` (or empty), as Hatchet namespaces are."""
    ns = namespace.strip().lower()
    if ns and not ns.endswith("_"):
        ns += "_"
    return ns


class ClientCore:
    """A client's settings and engine access, shared by everything built from it.

    ``_pool`` (channels and call metadata) and ``_runs`` (trigger and wait calls) are for the
    SDK's own modules; users go through ``Hewer``'s methods.
    """

    def __init__(self, settings: ClientSettings, clock: Clock) -> None:
        self.settings = settings
        self.namespace = normalize_namespace(settings.namespace)
        self.clock = clock
        self._pool = ChannelPool(self._resolve)
        self._runs = RunClient(self._pool)

    def _resolve(self) -> Connection:
        return resolve_connection(self.settings)

    @property
    def connection(self) -> Connection:
        """Engine address and token (resolved on first use; may raise ConfigurationError)."""
        return self._pool.connection

    def namespaced(self, name: str) -> str:
        """``name`` with this client's namespace in front (unless already there)."""
        if not self.namespace or name.lower().startswith(self.namespace):
            return name
        return self.namespace + name

    def close(self) -> None:
        """Close the blocking channel (async channels: ``aclose`` on their loop)."""
        self._pool.close()

    async def aclose(self) -> None:
        """Close the running loop's results stream and channel."""
        await self._runs.aclose()
        await self._pool.aclose()
