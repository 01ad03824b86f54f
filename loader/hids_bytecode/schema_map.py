"""raw -> ECS 8.x and OCSF 1.x: the whole mapping, as data (docs/EVENTS.md explains it event by event).

A raw record is what the stream yields with `format="raw"`: the decoded event (docs/DESIGN.md) plus
`time` (RFC 3339), `time_ns`, `program`, `host`, `container` and `schema_version`. Each mapping is
`{target field: source}`; a source is a constant (int, list, or a string starting with "="), a
dotted path into the raw record, or `"fn:path"` with `fn` one of _TRANSFORMS. A source that
yields None, "" or [] leaves the field out. Everything the schemas have no field for is kept, so
nothing is lost: under `hids` (ECS custom field set) and `unmapped` (OCSF).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

__all__ = ["SCHEMA_VERSION", "ECS_VERSION", "OCSF_VERSION", "ECS", "OCSF", "FORMATS", "to_ecs", "to_ocsf",
           "convert"]

SCHEMA_VERSION = "1"  # of the records this loader emits (raw layout and the mappings below)
ECS_VERSION = "8.17.0"
OCSF_VERSION = "1.9.0"
FORMATS = ("raw", "ecs", "ocsf")

_CAPS = ("CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID "
         "CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_ADMIN CAP_NET_RAW "
         "CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT "
         "CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD "
         "CAP_LEASE CAP_AUDIT_WRITE CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG "
         "CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE").split()
_PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp", 132: "sctp"}


def _id(value: Any) -> str | None:
    """A uid/gid as the schemas' keyword/string; -1 means "left unchanged": no value."""
    return None if not isinstance(value, int) or value in (-1, 0xFFFFFFFF) else str(value)


def _exit(status: Any) -> int | None:
    """wait(2) status -> exit code as a shell reports it (128 + signal when killed)."""
    if not isinstance(status, int):
        return None
    return (status >> 8) & 0xFF if status & 0x7F == 0 else 128 + (status & 0x7F)


def _ip(value: Any) -> str | None:
    try:
        return str(ipaddress.ip_address(value)) if isinstance(value, str) else None
    except ValueError:
        return None


def _caps(mask: Any) -> list[str] | None:
    if not isinstance(mask, int):
        return None
    return [_CAPS[bit] if bit < len(_CAPS) else str(bit) for bit in range(64) if mask >> bit & 1]


_TRANSFORMS: dict[str, Callable[[Any], Any]] = {
    "str": lambda v: None if v is None else str(v),
    "id": _id,
    "exit": _exit,
    "ip": _ip,
    "caps": _caps,
    "basename": lambda v: os.path.basename(v) if isinstance(v, str) else None,
    "join": lambda v: " ".join(v) if isinstance(v, list) else None,
    "octal": lambda v: f"{v & 0o7777:04o}" if isinstance(v, int) else None,
    "transport": lambda v: _PROTOCOLS.get(v),
    "nettype": lambda v: {2: "ipv4", 10: "ipv6"}.get(v),
    "ipver": lambda v: {2: 4, 10: 6}.get(v),
    "ms": lambda v: v // 1_000_000 if isinstance(v, int) else None,
    "dataset": lambda v: f"hids_bytecode.{v}" if v else None,
}

# ---------------------------------------------------------------------------------------- ECS
_ECS_COMMON = {
    "@timestamp": "time",
    "ecs.version": "=" + ECS_VERSION,
    "event.kind": "=event",
    "event.module": "=hids_bytecode",
    "event.dataset": "dataset:program",
    "host.name": "host.name",
    "container.id": "container.id",
    "container.runtime": "container.runtime",
    "process.pid": "hdr.tgid",
    "process.thread.id": "hdr.pid",
    "process.parent.pid": "hdr.ppid",
    "process.name": "hdr.comm",
    "user.id": "str:hdr.uid",
    "group.id": "str:hdr.gid",
}
_ECS_FILE = {"file.path": "path", "file.name": "basename:path"}
_ECS_CONNECT = {"source.ip": "ip:saddr", "source.port": "sport", "destination.ip": "ip:daddr",
                "destination.port": "dport", "network.transport": "transport:protocol",
                "network.type": "nettype:family"}
# accept: the peer (daddr) started the connection, so it is the ECS source.
_ECS_ACCEPT = {"source.ip": "ip:daddr", "source.port": "dport", "destination.ip": "ip:saddr",
               "destination.port": "sport", "network.transport": "transport:protocol",
               "network.type": "nettype:family"}
_OOM_OMIT = ("process.thread.id", "process.parent.pid", "process.name")  # those are the killer's

# event: (category, type, {field: source}, fields of _ECS_COMMON left out)
ECS: dict[str, tuple[list[str], list[str], dict[str, Any], tuple[str, ...]]] = {
    "exec": (["process"], ["start"], {"process.executable": "filename", "process.args": "argv",
                                       "process.args_count": "argc", "process.command_line": "join:argv"}, ()),
    "fork": (["process"], ["start"], {"process.pid": "child_tgid", "process.thread.id": "child_pid",
                                       "process.parent.pid": "hdr.tgid"}, ()),
    "exit": (["process"], ["end"], {"process.exit_code": "exit:exit_code"}, ()),
    "setuid": (["process"], ["change"], {"process.real_user.id": "id:ruid", "process.user.id": "id:euid",
                                          "process.saved_user.id": "id:suid"}, ()),
    "setgid": (["process"], ["change"], {"process.real_group.id": "id:rgid", "process.group.id": "id:egid",
                                          "process.saved_group.id": "id:sgid"}, ()),
    "capset": (["process"], ["change"], {"process.thread.capabilities.effective": "caps:effective",
                                          "process.thread.capabilities.permitted": "caps:permitted"}, ()),
    "ptrace": (["process"], ["access"], {}, ()),
    "oom_kill": (["process"], ["end"], {"process.pid": "victim_pid"}, _OOM_OMIT),
    "open": (["file"], ["access"], _ECS_FILE, ()),
    "chmod": (["file"], ["change"], {**_ECS_FILE, "file.mode": "octal:mode"}, ()),
    "chown": (["file"], ["change"], {**_ECS_FILE, "file.uid": "id:uid"}, ()),
    "mkdir": (["file"], ["creation"], {**_ECS_FILE, "file.type": "=dir", "file.mode": "octal:mode"}, ()),
    "rmdir": (["file"], ["deletion"], {**_ECS_FILE, "file.type": "=dir"}, ()),
    "unlink": (["file"], ["deletion"], _ECS_FILE, ()),
    "rename": (["file"], ["change"], {"file.path": "newpath", "file.name": "basename:newpath"}, ()),
    "utimes": (["file"], ["change"], _ECS_FILE, ()),
    "link": (["file"], ["creation"], {"file.path": "newpath", "file.name": "basename:newpath"}, ()),
    "setxattr": (["file"], ["change"], _ECS_FILE, ()),
    "removexattr": (["file"], ["change"], _ECS_FILE, ()),
    "module_load": (["driver"], ["start"], {}, ()),
    "bpf": (["api"], ["info"], {}, ()),
    "mount": (["configuration"], ["change"], {"file.path": "target"}, ()),
    "umount": (["configuration"], ["change"], {"file.path": "target"}, ()),
    "connect": (["network"], ["connection", "start"], {**_ECS_CONNECT, "network.direction": "=egress"}, ()),
    "accept": (["network"], ["connection", "start"], {**_ECS_ACCEPT, "network.direction": "=ingress"}, ()),
    "close": (["network"], ["connection", "end"], _ECS_CONNECT, ()),
}

# --------------------------------------------------------------------------------------- OCSF
PROCESS_ACTIVITY, FILE_ACTIVITY, KERNEL_ACTIVITY, MODULE_ACTIVITY, NETWORK_ACTIVITY = 1007, 1001, 1003, 1005, 4001
_OCSF_COMMON = {
    "time": "ms:time_ns",
    "time_dt": "time",
    "severity_id": 1,  # Informational
    "metadata.version": "=" + OCSF_VERSION,
    "metadata.product.name": "=hids-bytecode",
    "metadata.product.vendor_name": "=hids-bytecode",
    "metadata.log_version": "schema_version",
    "metadata.profiles": ["host", "container", "datetime"],
    "device.hostname": "host.name",
    "device.type_id": 0,  # Unknown: nothing here says server or desktop
    "container.uid": "container.id",
    "container.runtime": "container.runtime",
    "actor.process.pid": "hdr.tgid",
    "actor.process.ptid": "hdr.pid",
    "actor.process.name": "hdr.comm",
    "actor.process.parent_process.pid": "hdr.ppid",
    "actor.user.uid": "str:hdr.uid",
}
_OCSF_PROCESS_SELF = {"process.pid": "hdr.tgid", "process.name": "hdr.comm", "process.parent_process.pid": "hdr.ppid"}
_OCSF_FILE = {"file.path": "path", "file.name": "basename:path", "file.type_id": 0}
_OCSF_DIR = {"file.path": "path", "file.name": "basename:path", "file.type_id": 2}  # Folder
_OCSF_CONNECT = {"src_endpoint.ip": "ip:saddr", "src_endpoint.port": "sport", "dst_endpoint.ip": "ip:daddr",
                 "dst_endpoint.port": "dport", "connection_info.protocol_name": "transport:protocol",
                 "connection_info.protocol_ver_id": "ipver:family"}
_OCSF_ACCEPT = {"src_endpoint.ip": "ip:daddr", "src_endpoint.port": "dport", "dst_endpoint.ip": "ip:saddr",
                "dst_endpoint.port": "sport", "connection_info.protocol_name": "transport:protocol",
                "connection_info.protocol_ver_id": "ipver:family"}

# event: (class_uid, activity_id, {field: source})
OCSF: dict[str, tuple[int, int, dict[str, Any]]] = {
    "exec": (PROCESS_ACTIVITY, 1, {**_OCSF_PROCESS_SELF, "process.file.path": "filename",
                                   "process.file.name": "basename:filename", "process.file.type_id": 1,
                                   "process.cmd_line": "join:argv"}),
    "fork": (PROCESS_ACTIVITY, 1, {"process.pid": "child_tgid", "process.parent_process.pid": "hdr.tgid"}),
    "exit": (PROCESS_ACTIVITY, 2, {**_OCSF_PROCESS_SELF, "exit_code": "exit:exit_code"}),
    "setuid": (PROCESS_ACTIVITY, 5, {**_OCSF_PROCESS_SELF, "process.user.uid": "id:euid"}),
    "setgid": (PROCESS_ACTIVITY, 99, {**_OCSF_PROCESS_SELF, "activity_name": "=Set Group ID"}),
    "capset": (PROCESS_ACTIVITY, 99, {**_OCSF_PROCESS_SELF, "activity_name": "=Set Capabilities"}),
    "ptrace": (PROCESS_ACTIVITY, 3, {"process.pid": "target_pid"}),
    "oom_kill": (PROCESS_ACTIVITY, 2, {"process.pid": "victim_pid"}),
    "open": (FILE_ACTIVITY, 14, _OCSF_FILE),
    "chmod": (FILE_ACTIVITY, 7, _OCSF_FILE),
    "chown": (FILE_ACTIVITY, 7, _OCSF_FILE),
    "mkdir": (FILE_ACTIVITY, 1, _OCSF_DIR),
    "rmdir": (FILE_ACTIVITY, 4, _OCSF_DIR),
    "unlink": (FILE_ACTIVITY, 4, _OCSF_FILE),
    "rename": (FILE_ACTIVITY, 5, {"file.path": "oldpath", "file.name": "basename:oldpath", "file.type_id": 0,
                                  "file_result.path": "newpath", "file_result.name": "basename:newpath",
                                  "file_result.type_id": 0}),
    "utimes": (FILE_ACTIVITY, 6, _OCSF_FILE),
    "link": (FILE_ACTIVITY, 1, {"file.path": "newpath", "file.name": "basename:newpath", "file.type_id": 0}),
    "setxattr": (FILE_ACTIVITY, 6, _OCSF_FILE),
    "removexattr": (FILE_ACTIVITY, 6, _OCSF_FILE),
    "mount": (FILE_ACTIVITY, 12, {"file.path": "target", "file.name": "basename:target", "file.type_id": 2}),
    "umount": (FILE_ACTIVITY, 13, {"file.path": "target", "file.name": "basename:target", "file.type_id": 2}),
    "module_load": (MODULE_ACTIVITY, 1, {"module.load_type_id": 0}),
    "bpf": (KERNEL_ACTIVITY, 4, {"kernel.name": "=bpf", "kernel.type_id": 2}),  # System Call
    "connect": (NETWORK_ACTIVITY, 1, {**_OCSF_CONNECT, "connection_info.direction_id": 2}),  # Outbound
    "accept": (NETWORK_ACTIVITY, 1, {**_OCSF_ACCEPT, "connection_info.direction_id": 1}),  # Inbound
    "close": (NETWORK_ACTIVITY, 2, _OCSF_CONNECT),
}
_CATEGORIES = {PROCESS_ACTIVITY: 1, FILE_ACTIVITY: 1, KERNEL_ACTIVITY: 1, MODULE_ACTIVITY: 1, NETWORK_ACTIVITY: 4}


# ---------------------------------------------------------------------------------- machinery
def _get(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _resolve(record: dict[str, Any], source: Any) -> Any:
    if not isinstance(source, str):
        return source
    if source.startswith("="):
        return source[1:]
    fn, sep, path = source.partition(":")
    if sep:
        return _TRANSFORMS[fn](_get(record, path))
    return _get(record, source)


def _put(out: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".") if dotted != "@timestamp" else [dotted]
    for key in parents:
        out = out.setdefault(key, {})
    out[leaf] = value


def _apply(out: dict[str, Any], record: dict[str, Any], fields: dict[str, Any]) -> None:
    for target, source in fields.items():
        value = _resolve(record, source)
        if value is not None and value != "" and value != []:
            _put(out, target, value)


def _payload(record: dict[str, Any]) -> dict[str, Any]:
    enrichment = ("event", "hdr", "time", "time_ns", "program", "host", "container", "schema_version")
    return {k: v for k, v in record.items() if k not in enrichment}


def _custom(record: dict[str, Any]) -> dict[str, Any]:
    hdr = record.get("hdr", {})
    return {"schema_version": record.get("schema_version"), "event": record.get("event"),
            "program": record.get("program"), "ts_ns": hdr.get("ts_ns"), "flags": hdr.get("flags"),
            "cgroup_id": hdr.get("cgroup_id"), "data": _payload(record)}


def to_ecs(record: dict[str, Any]) -> dict[str, Any]:
    name: str | None = record.get("event")
    category, types, fields, omit = ECS.get(name or "", (["host"], ["info"], {}, ()))
    out: dict[str, Any] = {}
    _apply(out, record, {k: v for k, v in _ECS_COMMON.items() if k not in omit})
    _apply(out, record, {"event.category": category, "event.type": types, "event.action": f"={name}", **fields})
    out["hids"] = _custom(record)
    return out


def to_ocsf(record: dict[str, Any]) -> dict[str, Any]:
    name: str | None = record.get("event")
    class_uid, activity, fields = OCSF.get(name or "", (PROCESS_ACTIVITY, 99, {}))
    out: dict[str, Any] = {}
    _apply(out, record, {**_OCSF_COMMON, "class_uid": class_uid, "category_uid": _CATEGORIES[class_uid],
                         "activity_id": activity, "type_uid": class_uid * 100 + activity, **fields})
    out["unmapped"] = _custom(record)
    return out


def convert(record: dict[str, Any], fmt: str) -> dict[str, Any]:
    """`record` (raw) in `fmt`; records that are not events (lost reports) stay as they are."""
    if fmt == "raw" or "hdr" not in record:
        return record
    return to_ecs(record) if fmt == "ecs" else to_ocsf(record)
