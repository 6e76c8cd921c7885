"""Regenerate Hewer's gRPC/protobuf Python code from ``contracts/*.proto``.

Run from anywhere (paths are resolved relative to this file):

    .venv/bin/python scripts/gen_proto.py

What it does:

1. Deletes previously generated ``*_pb2*.py``/``*.pyi`` files under ``src/hewer/_proto/``
   (so renamed or removed contracts don't leave stale modules behind).
2. Runs ``grpc_tools.protoc -I contracts --python_out --pyi_out --grpc_python_out`` on
   every ``.proto`` file below ``contracts/``, writing into ``src/hewer/_proto/``.
3. Creates ``__init__.py`` in every generated subpackage (e.g. ``_proto/v1/shared``).
4. Rewrites protoc's absolute imports (``import dispatcher_pb2 as ...``,
   ``from v1.shared import trigger_pb2 as ...``) into ``hewer._proto``-prefixed
   imports, so ``from hewer._proto.v1 import workflows_pb2`` works without putting
   ``src/hewer/_proto`` on ``sys.path``.

Requires the ``dev`` extra (``grpcio-tools``). Commit the generated files together
with the ``.proto`` changes; ``tests/compat/test_proto_parity.py`` checks them
against the hatchet-sdk wire contract.
"""

from __future__ import annotations

import re
import shutil
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts"
OUT = ROOT / "src" / "hewer" / "_proto"
PACKAGE = "hewer._proto"

_GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _clean() -> None:
    """Remove generated modules (and emptied subpackages) from earlier runs."""
    OUT.mkdir(parents=True, exist_ok=True)
    for path in sorted(OUT.rglob("*")):
        if path.is_file() and path.name.endswith(_GENERATED_SUFFIXES):
            path.unlink()
    for cache in sorted(OUT.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    # Drop subpackages left with nothing but an __init__.py (deepest first).
    for sub in sorted((p for p in OUT.rglob("*") if p.is_dir()), reverse=True):
        children = {c.name for c in sub.iterdir()}
        if children <= {"__init__.py"}:
            shutil.rmtree(sub)


def _run_protoc(protos: list[Path]) -> None:
    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{CONTRACTS}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *(str(p.relative_to(CONTRACTS)) for p in protos),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")


def _ensure_init_files() -> None:
    (OUT / "__init__.py").touch(exist_ok=True)
    for sub in OUT.rglob("*"):
        if sub.is_dir() and sub.name != "__pycache__":
            (sub / "__init__.py").touch(exist_ok=True)


def _local_roots(protos: list[Path]) -> set[str]:
    """Top-level names protoc may import absolutely: root modules and root dirs."""
    roots: set[str] = set()
    for proto in protos:
        rel = proto.relative_to(CONTRACTS)
        roots.add(rel.parts[0] if len(rel.parts) > 1 else f"{rel.stem}_pb2")
    return roots


def _rewrite_imports(roots: set[str]) -> int:
    alternatives = "|".join(sorted(re.escape(r) for r in roots))
    # ``import dispatcher_pb2 as dispatcher__pb2``
    plain = re.compile(rf"^(\s*)import ((?:{alternatives})\w*)( as \w+)?$", re.MULTILINE)
    # ``from v1.shared import trigger_pb2 as ...`` / ``from v1 import workflows_pb2 ...``
    dotted = re.compile(rf"^(\s*)from ((?:{alternatives})(?:\.\w+)*) import ", re.MULTILINE)

    changed = 0
    for path in sorted(OUT.rglob("*")):
        if not (path.is_file() and path.name.endswith(_GENERATED_SUFFIXES)):
            continue
        text = path.read_text(encoding="utf-8")
        # Dotted ones first: a contract package may be called ``hewer`` itself, and the
        # plain rewrite produces ``from hewer._proto import ...`` lines.
        new = dotted.sub(lambda m: f"{m.group(1)}from {PACKAGE}.{m.group(2)} import ", text)
        new = plain.sub(
            lambda m: f"{m.group(1)}from {PACKAGE} import {m.group(2)}{m.group(3) or ''}",
            new,
        )
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed += 1
    return changed


def main() -> int:
    protos = sorted(CONTRACTS.rglob("*.proto"))
    if not protos:
        print(f"no .proto files under {CONTRACTS}", file=sys.stderr)
        return 1
    _clean()
    _run_protoc(protos)
    _ensure_init_files()
    changed = _rewrite_imports(_local_roots(protos))
    generated = sorted(
        p.relative_to(ROOT) for p in OUT.rglob("*") if p.name.endswith(_GENERATED_SUFFIXES)
    )
    print(
        f"generated {len(generated)} files from {len(protos)} protos into {OUT.relative_to(ROOT)}"
    )
    print(f"rewrote imports in {changed} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
