"""Child processes a supervising command (``worker dev``, ``worker start --autoscale``)
starts: each in a session of its own, so that a Ctrl-C in the terminal reaches the
supervisor only (which stops each child once, in its order), and on Linux told to stop
when the supervisor dies."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from typing import Any


def _die_with_parent() -> None:
    """Runs in the child before exec (Linux): SIGTERM when its supervisor dies, so that a
    killed supervisor leaves no engine holding its ports, nor workers nobody watches. The
    kernel sends it when the thread that started the child ends: supervisors start their
    children from their main thread, whose end is the process's."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def supervised_child() -> dict[str, Any]:
    """Keyword arguments of ``subprocess.Popen`` for such a child."""
    if os.name != "posix":
        return {}
    options: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux"):
        options["preexec_fn"] = _die_with_parent
    return options
