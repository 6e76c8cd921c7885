"""Dump protobuf contracts (services, messages, enums) as JSON on stdout.

Helper for ``test_proto_parity.py``. It always runs in its own interpreter, because
hatchet-sdk and Hewer register the same message full names in protobuf's default
descriptor pool, so the two sets of generated modules can never share a process.

Usage::

    python _descriptor_dump.py hatchet            # hatchet_sdk's compiled contracts
    python _descriptor_dump.py hewer              # hewer._proto (generated code)
    python _descriptor_dump.py descriptor-set F   # a protoc --descriptor_set_out file
                                                  # (built with --include_imports)

Exit code 3 means the requested package is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor

EXIT_NOT_INSTALLED = 3

# Modules mirrored by Hewer plus everything else hatchet-sdk ships, so that
# "does this exist upstream?" sees the whole upstream surface.
HATCHET_MODULES = [
    "hatchet_sdk.contracts.dispatcher_pb2",
    "hatchet_sdk.contracts.events_pb2",
    "hatchet_sdk.contracts.workflows_pb2",
    "hatchet_sdk.contracts.v1.shared.trigger_pb2",
    "hatchet_sdk.contracts.v1.shared.condition_pb2",
    "hatchet_sdk.contracts.v1.workflows_pb2",
    "hatchet_sdk.contracts.v1.dispatcher_pb2",
]

HEWER_MODULES = [
    "hewer._proto.dispatcher_pb2",
    "hewer._proto.events_pb2",
    "hewer._proto.workflows_pb2",
    "hewer._proto.v1.shared.trigger_pb2",
    "hewer._proto.v1.shared.condition_pb2",
    "hewer._proto.v1.workflows_pb2",
    "hewer._proto.v1.dispatcher_pb2",
    "hewer._proto.hewer.v1.worker_pb2",
]

_T = descriptor_pb2.FieldDescriptorProto


def _field_record(
    fp: descriptor_pb2.FieldDescriptorProto,
    owner: descriptor_pb2.DescriptorProto,
    desc: Descriptor,
    map_entries: dict[str, descriptor_pb2.DescriptorProto],
) -> dict[str, Any]:
    type_name = fp.type_name.lstrip(".")
    entry = map_entries.get(type_name) if fp.type == _T.TYPE_MESSAGE else None
    is_map = fp.label == _T.LABEL_REPEATED and entry is not None
    record: dict[str, Any] = {
        "name": fp.name,
        "number": fp.number,
        "type": _T.Type.Name(fp.type),
        "type_name": type_name or None,
        "label": _T.Label.Name(fp.label),
        "repeated": fp.label == _T.LABEL_REPEATED,
        "proto3_optional": fp.proto3_optional,
        # A real (non-synthetic) oneof the field belongs to, if any.
        "oneof": (
            owner.oneof_decl[fp.oneof_index].name
            if fp.HasField("oneof_index") and not fp.proto3_optional
            else None
        ),
        "map": is_map,
        "json_name": desc.fields_by_number[fp.number].json_name,
        "packed": fp.options.packed if fp.options.HasField("packed") else None,
    }
    if is_map and entry is not None:
        key, value = sorted(entry.field, key=lambda f: f.number)
        record["map_key"] = _T.Type.Name(key.type)
        record["map_value"] = _T.Type.Name(value.type)
        record["map_value_type_name"] = value.type_name.lstrip(".") or None
    return record


def _enum_record(enum: EnumDescriptor) -> dict[str, int]:
    return {v.name: v.number for v in enum.values}


def _walk_message(
    mp: descriptor_pb2.DescriptorProto,
    desc: Descriptor,
    file_name: str,
    out: dict[str, Any],
) -> None:
    full = desc.full_name
    map_entries = {
        f"{full}.{nested.name}": nested for nested in mp.nested_type if nested.options.map_entry
    }
    out["messages"][full] = {
        "file": file_name,
        "map_entry": mp.options.map_entry,
        "real_oneofs": sorted(
            {
                mp.oneof_decl[f.oneof_index].name
                for f in mp.field
                if f.HasField("oneof_index") and not f.proto3_optional
            }
        ),
        "fields": {
            str(fp.number): _field_record(fp, mp, desc, map_entries)
            for fp in sorted(mp.field, key=lambda f: f.number)
        },
    }
    for nested_p in mp.nested_type:
        _walk_message(nested_p, desc.nested_types_by_name[nested_p.name], file_name, out)
    for enum_p in mp.enum_type:
        enum = desc.enum_types_by_name[enum_p.name]
        out["enums"][enum.full_name] = {"file": file_name, "values": _enum_record(enum)}


def dump_files(files: list[FileDescriptor]) -> dict[str, Any]:
    out: dict[str, Any] = {"files": {}, "services": {}, "messages": {}, "enums": {}}
    for fd in files:
        fp = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(fp)
        out["files"][fd.name] = {
            "package": fd.package,
            "syntax": fp.syntax or "proto2",
            "dependencies": sorted(d.name for d in fd.dependencies),
            "messages": sorted(f"{fd.package}.{m.name}".lstrip(".") for m in fp.message_type),
            "enums": sorted(f"{fd.package}.{e.name}".lstrip(".") for e in fp.enum_type),
            "services": sorted(s.full_name for s in fd.services_by_name.values()),
        }
        for mp in fp.message_type:
            _walk_message(mp, fd.message_types_by_name[mp.name], fd.name, out)
        for enum in fd.enum_types_by_name.values():
            out["enums"][enum.full_name] = {"file": fd.name, "values": _enum_record(enum)}
        for service in fd.services_by_name.values():
            out["services"][service.full_name] = {
                "file": fd.name,
                "methods": {
                    m.name: {
                        "input": m.input_type.full_name,
                        "output": m.output_type.full_name,
                        "client_streaming": m.client_streaming,
                        "server_streaming": m.server_streaming,
                    }
                    for m in service.methods
                },
            }
    return out


def _from_modules(names: list[str]) -> list[FileDescriptor]:
    return [importlib.import_module(name).DESCRIPTOR for name in names]


def _from_descriptor_set(path: str) -> list[FileDescriptor]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes())
    pool = descriptor_pool.DescriptorPool()  # private pool: no clash with generated code
    for file_proto in fds.file:  # --include_imports emits dependencies first
        pool.Add(file_proto)
    return [
        pool.FindFileByName(f.name) for f in fds.file if not f.name.startswith("google/protobuf/")
    ]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    source = argv[0]
    if source == "hatchet":
        if importlib.util.find_spec("hatchet_sdk") is None:
            return EXIT_NOT_INSTALLED
        files = _from_modules(HATCHET_MODULES)
    elif source == "hewer":
        src = Path(__file__).resolve().parents[2] / "src"
        sys.path.insert(0, str(src))
        files = _from_modules(HEWER_MODULES)
    elif source == "descriptor-set" and len(argv) == 2:
        files = _from_descriptor_set(argv[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(dump_files(files), sys.stdout, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
