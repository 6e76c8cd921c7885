"""Wire parity between Hewer's contracts and hatchet-sdk 1.43.1's compiled contracts.

hatchet_sdk is never imported in this process: its generated modules and ours register
the same full names (``AssignedAction``, ``v1.TriggerWorkflowRequest``...) in protobuf's
default descriptor pool. Each side is dumped to JSON by ``_descriptor_dump.py`` in a
subprocess and only the JSON is compared here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DUMPER = HERE / "_descriptor_dump.py"
CONTRACTS = ROOT / "contracts"
EXIT_NOT_INSTALLED = 3

# Services whose method set must equal upstream's exactly.
CORE_SERVICES = (
    "Dispatcher",
    "EventsService",
    "WorkflowService",
    "v1.AdminService",
    "v1.V1Dispatcher",
)

Dump = dict[str, Any]


def _run_dumper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DUMPER), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def _load(proc: subprocess.CompletedProcess[str], what: str) -> Dump:
    assert proc.returncode == 0, f"dumping {what} failed:\n{proc.stderr}"
    result: Dump = json.loads(proc.stdout)
    return result


@pytest.fixture(scope="module")
def upstream() -> Dump:
    proc = _run_dumper("hatchet")
    if proc.returncode == EXIT_NOT_INSTALLED:
        pytest.skip("hatchet-sdk is not installed (pip install 'hewer[test]')")
    return _load(proc, "hatchet_sdk contracts")


# Hewer's own package (hewer.v1, its batched calls) has no upstream counterpart.
OWN_PACKAGE = "hewer."


@pytest.fixture(scope="module")
def generated() -> Dump:
    """Every contract's generated code, Hewer's own included."""
    return _load(_run_dumper("hewer"), "hewer._proto")


@pytest.fixture(scope="module")
def ours(generated: Dump) -> Dump:
    """The Hatchet wire: what must match upstream."""
    return {
        "files": {
            name: info
            for name, info in generated["files"].items()
            if not info["package"].startswith(OWN_PACKAGE.rstrip("."))
        },
        **{
            kind: {n: v for n, v in generated[kind].items() if not n.startswith(OWN_PACKAGE)}
            for kind in ("services", "messages", "enums")
        },
    }


def _diff(ours: Any, theirs: Any) -> str:
    return (
        f"\n  ours:     {json.dumps(ours, sort_keys=True)}"
        f"\n  upstream: {json.dumps(theirs, sort_keys=True)}"
    )


def test_services_exist_upstream_with_same_signatures(ours: Dump, upstream: Dump) -> None:
    problems: list[str] = []
    for name, service in ours["services"].items():
        theirs = upstream["services"].get(name)
        if theirs is None:
            problems.append(f"service {name} does not exist upstream")
            continue
        for method, signature in service["methods"].items():
            their_sig = theirs["methods"].get(method)
            if their_sig is None:
                problems.append(f"{name}.{method} does not exist upstream")
            elif signature != their_sig:
                problems.append(f"{name}.{method} signature differs:{_diff(signature, their_sig)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("service", CORE_SERVICES)
def test_core_service_method_sets_match_exactly(service: str, ours: Dump, upstream: Dump) -> None:
    assert service in upstream["services"], f"{service} missing upstream (dump broken?)"
    assert service in ours["services"], f"{service} is not defined in contracts/"
    assert ours["services"][service]["methods"] == upstream["services"][service]["methods"]


def test_messages_match_upstream(ours: Dump, upstream: Dump) -> None:
    problems: list[str] = []
    for name, message in ours["messages"].items():
        theirs = upstream["messages"].get(name)
        if theirs is None:
            problems.append(f"message {name} does not exist upstream")
            continue
        for key in ("file", "map_entry", "real_oneofs"):
            if message[key] != theirs[key]:
                problems.append(f"message {name}: {key} differs:{_diff(message[key], theirs[key])}")
        numbers = sorted(set(message["fields"]) | set(theirs["fields"]), key=int)
        for number in numbers:
            mine, their_field = message["fields"].get(number), theirs["fields"].get(number)
            if mine != their_field:
                problems.append(f"{name} field #{number} differs:{_diff(mine, their_field)}")
    assert not problems, "\n".join(problems)


def test_enums_match_upstream(ours: Dump, upstream: Dump) -> None:
    problems: list[str] = []
    for name, enum in ours["enums"].items():
        theirs = upstream["enums"].get(name)
        if theirs is None:
            problems.append(f"enum {name} does not exist upstream")
        elif enum != theirs:
            problems.append(f"enum {name} differs:{_diff(enum, theirs)}")
    assert not problems, "\n".join(problems)


def test_contract_files_mirror_upstream_files(ours: Dump, upstream: Dump) -> None:
    """Each of our .proto files declares the same package, imports and top-level names."""
    problems: list[str] = []
    for name, info in ours["files"].items():
        theirs = upstream["files"].get(name)
        if theirs is None:
            problems.append(f"file {name} has no upstream counterpart")
        elif info != theirs:
            problems.append(f"file {name} differs:{_diff(info, theirs)}")
    assert not problems, "\n".join(problems)


def test_generated_code_matches_contracts(generated: Dump, tmp_path: Path) -> None:
    """src/hewer/_proto is up to date with contracts/ (run scripts/gen_proto.py if not)."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) not installed")
    from importlib import resources

    out = tmp_path / "contracts.pb"
    protos = sorted(str(p.relative_to(CONTRACTS)) for p in CONTRACTS.rglob("*.proto"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{CONTRACTS}",
            f"-I{resources.files('grpc_tools') / '_proto'}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            *protos,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"protoc failed:\n{proc.stderr}"
    fresh = _load(_run_dumper("descriptor-set", str(out)), "fresh protoc output")
    assert fresh == generated, (
        "generated code in src/hewer/_proto is stale: run .venv/bin/python scripts/gen_proto.py"
    )
