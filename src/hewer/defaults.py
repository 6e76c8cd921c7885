"""Upstream (Hatchet) defaults, in one place: the engine, the store and the SDK read them
from here, so a worker and an engine that disagree on a default cannot happen."""

from __future__ import annotations

# Workers
DEFAULT_SLOT_TYPE = "default"
DEFAULT_SLOTS = 100
# Durable tasks mostly wait, so a worker holds many more of them (as hatchet-sdk does).
DEFAULT_DURABLE_SLOTS = 1000
HEARTBEAT_INTERVAL_S = 4.0
INACTIVE_AFTER_S = 30.0

# Tasks
EXECUTION_TIMEOUT_S = 60.0
SCHEDULE_TIMEOUT_S = 300.0
RETRIES = 0
# Retries with a backoff factor but no cap wait at most a day.
BACKOFF_MAX_S = 86_400.0
MIN_PRIORITY = 1
MAX_PRIORITY = 3
DEFAULT_PRIORITY = MIN_PRIORITY

# Affinity: the rank a satisfied desired label adds when it names no weight.
LABEL_WEIGHT = 100

# A task whose worker is lost this many times fails (a poison task must not crash workers
# forever).
MAX_REASSIGNMENTS = 3

# Bulk calls
MAX_BULK_TRIGGER = 1000
