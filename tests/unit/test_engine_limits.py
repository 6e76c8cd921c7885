"""Process-level limits the engine sets at start: the open files soft limit, and failed
accepts logged once per interval rather than once per attempt (reliability reference B6)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest

from hewer.engine.app import ACCEPT_ERROR_LOG_SECONDS, quiet_accept_errors


def test_the_open_files_soft_limit_is_raised_to_the_hard_limit() -> None:
    script = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from hewer.engine.app import MAX_OPEN_FILES, raise_open_files_limit\n"
        "raise_open_files_limit()\n"
        "now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "want = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)\n"
        "print(now == want and now > 256)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "True", out.stderr


def test_failed_accepts_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        others: list[str] = []
        loop.set_exception_handler(lambda _loop, ctx: others.append(ctx["message"]))
        quiet_accept_errors(loop)
        quiet_accept_errors(loop)  # idempotent
        failure = OSError(24, "Too many open files")
        with caplog.at_level(logging.ERROR, logger="hewer.engine.app"):
            for _ in range(1000):
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": failure}
                )
            loop.call_exception_handler({"message": "something else", "exception": failure})
        lines = [r for r in caplog.records if "accepting connections fails" in r.getMessage()]
        assert len(lines) == 1, f"one line per {ACCEPT_ERROR_LOG_SECONDS:.0f}s"
        assert others == ["something else"], "other errors still reach the previous handler"
    finally:
        loop.close()
