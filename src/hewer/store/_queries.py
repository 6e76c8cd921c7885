"""Named SQL queries and numbered migrations, read once from the package's ``.sql`` files.

A query file holds blocks introduced by ``-- name: <query>``; migrations are files named
``NNNN_<what>.sql`` under ``migrations/<dialect>/``.
"""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def load(dialect: str, columns: dict[str, str] | None = None) -> dict[str, str]:
    """All named queries of a dialect, keyed by name; ``{name}`` placeholders in their text
    are replaced by ``columns[name]``."""
    queries: dict[str, str] = {}
    folder = resources.files("hewer.store") / "sql" / dialect
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        text = entry.read_text(encoding="utf-8")
        parts = _NAME.split(text)
        # parts: [preamble, name1, body1, name2, body2, ...]
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in queries:
                raise ValueError(f"duplicate query name {name!r} in {dialect}")
            lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
            text = "\n".join(lines).strip().rstrip(";")
            queries[name] = text.format_map(columns) if columns else text
    return queries


def migrations(dialect: str) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration of a dialect, in order."""
    out: list[tuple[int, str, str]] = []
    folder = resources.files("hewer.store") / "migrations" / dialect
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            out.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(out)


def split_statements(sql: str) -> list[str]:
    """Split a migration into statements. Comments are dropped first; migrations put no
    ``--`` or ``;`` inside string literals."""
    body = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in body.split(";") if s.strip()]
