"""One pgqueuer worker: ``python -m bench.harness.pgqueuer_worker BATCH_SIZE MAX_TASKS``.

Goes through ``pgqueuer.run``, the supervisor ``pgq run`` calls, because pgqueuer 1.6's
``pgq run`` fails before it starts with current typer (its ``--log-level`` parser hands a
str where an enum is expected). Other options keep ``pgq run``'s defaults.
"""

from __future__ import annotations

import asyncio
import sys

import pgqueuer


def main() -> None:
    batch_size, max_tasks = int(sys.argv[1]), int(sys.argv[2])
    asyncio.run(
        pgqueuer.run(
            "bench.harness.pgqueuer_app:factory",
            batch_size=batch_size,
            max_concurrent_tasks=max_tasks,
        )
    )


if __name__ == "__main__":
    main()
