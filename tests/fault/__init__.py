"""Fault tests: real processes, real signals, scaled-down timing (issue 3)."""

from __future__ import annotations
