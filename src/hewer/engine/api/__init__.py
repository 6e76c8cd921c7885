"""The engine's HTTP API: the REST endpoints ``hatchet-sdk`` calls, admin reads, ``/health``.

Kept import-light: ``build_app`` lives in :mod:`hewer.engine.api.app`, the server that runs
it on the engine's event loop in :mod:`hewer.engine.api.server`.
"""

from __future__ import annotations
