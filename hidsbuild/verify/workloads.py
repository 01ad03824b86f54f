"""Guest workloads: real activity that makes each object emit every event kind it declares, and the
event each action must produce, field by field.

Runs inside the verification VM (standard library only). `guest_check.py` starts
`python3 workloads.py FAMILY WORKDIR [MODULE]` as its own child (the checker's tgid is filtered
in-kernel), reads the facts it prints as JSON (pids, fds, ports, values it used) and turns them
into expectations with `expectations()`. The declared kinds are bpf/README.md's table, checked
against bpf/*.bpf.c by tests/test_verify.py.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DECLARED: dict[str, tuple[str, ...]] = {
    "process": ("exec", "fork", "exit", "setuid", "setgid", "capset"),
    "file": ("open", "chmod", "chown", "mkdir", "rmdir", "unlink", "rename", "utimes", "link", "setxattr",
             "removexattr"),
    "kernel": ("module_load", "bpf", "ptrace", "mount", "umount", "oom_kill"),
    "network": ("connect", "accept", "close"),
}
# Syscalls glibc (bookworm's 2.36) has no wrapper for: numbers per machine.
_NR = {"x86_64": {"bpf": 321, "finit_module": 313, "init_module": 175, "delete_module": 176},
       "aarch64": {"bpf": 280, "finit_module": 273, "init_module": 105, "delete_module": 106}}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PTRACE_PEEKDATA, _PTRACE_ATTACH, _PTRACE_DETACH = 2, 16, 17
_PEEK_ADDR = 0x1000
_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2
_AT_SYMLINK_NOFOLLOW = 0x100
_CGROUP = "/sys/fs/cgroup"
_OOM_LIMIT = 32 << 20


@dataclass(frozen=True)
class Masked:
    """A flags field checked under a mask: the kernel may add bits of its own (O_LARGEFILE)."""
    mask: int
    value: int

    def matches(self, got: Any) -> bool:
        return isinstance(got, int) and got & self.mask == self.value

    def __str__(self) -> str:
        return f"&{self.mask:#o}=={self.value:#o}"


@dataclass(frozen=True)
class Expect:
    """One event the workload must have produced: of `kind`, by process `tgid`, with `fields`.
    `na` set: the guest cannot produce it, and this is the guest's own proof of why."""
    kind: str
    tgid: int
    fields: dict[str, Any] = field(default_factory=dict)
    na: str = ""

    def matches(self, event: dict[str, Any]) -> bool:
        if self.na or event.get("event") != self.kind or event.get("hdr", {}).get("tgid") != self.tgid:
            return False
        return all(want.matches(event.get(name)) if isinstance(want, Masked) else event.get(name) == want
                   for name, want in self.fields.items())

    def describe(self) -> str:
        return f"tgid={self.tgid} " + " ".join(f"{k}={v}" for k, v in self.fields.items())


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _syscall(name: str, *args: Any) -> int:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(ctypes.c_long(_NR[platform.machine()][name]), *args)


# --- process: fork, capset, setgid, setuid, exec, exit --------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _process(_work: str, _module: str | None) -> dict[str, Any]:
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if _libc().capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    effective = data[1].effective << 32 | data[0].effective
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # capset to what it has, then drop to a fixed gid/uid and exec /bin/false
        os.close(read)
        try:
            if _libc().capset(ctypes.byref(header), data) != 0:
                raise OSError(ctypes.get_errno(), "capset")
            os.setgid(4242)
            os.setuid(4343)
            os.execv("/bin/false", ["/bin/false", "hids-verify", "two words"])
        except BaseException as exc:  # the parent reports it: a child must never return into the caller
            os.write(write, repr(exc).encode())
        os._exit(99)
    os.close(write)
    problem = os.read(read, 4096).decode()
    _, status = os.waitpid(child, 0)
    if problem:
        raise RuntimeError(f"process workload child: {problem}")
    return {"pids": [os.getpid(), child], "parent": os.getpid(), "child": child, "effective": effective,
            "status": status}


def _process_expect(f: dict[str, Any]) -> list[Expect]:
    return [
        Expect("fork", f["parent"], {"child_tgid": f["child"], "child_pid": f["child"]}),
        Expect("capset", f["child"], {"target_pid": 0, "version": _LINUX_CAPABILITY_VERSION_3,
                                      "effective": f["effective"]}),
        Expect("setgid", f["child"], {"rgid": -1, "egid": 4242, "sgid": -1}),
        Expect("setuid", f["child"], {"ruid": -1, "euid": 4343, "suid": -1}),
        Expect("exec", f["child"], {"filename": "/bin/false", "argv": ["/bin/false", "hids-verify", "two words"],
                                    "argc": 3}),
        Expect("exit", f["child"], {"exit_code": f["status"]}),
    ]


# --- file: every path syscall of the object, on a tmpfs -----------------------------------------

def _file(work: str, _module: str | None) -> dict[str, Any]:
    a, b, c, d = (os.path.join(work, n) for n in ("a.txt", "b.txt", "c.txt", "dir"))
    os.close(os.open(a, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(a, 0o640)
    os.chown(a, 1234, 5678)
    os.utime(a, ns=(1, 2), follow_symlinks=False)
    for action in (lambda: os.setxattr(a, "user.hids", b"verify"), lambda: os.removexattr(a, "user.hids")):
        try:
            action()
        except OSError:
            pass  # tmpfs has user xattrs only since 6.6: the syscall was still entered, which is what is hooked
    os.link(a, b)
    os.rename(b, c)
    os.unlink(c)
    os.mkdir(d, 0o750)
    os.rmdir(d)
    return {"pids": [os.getpid()], "pid": os.getpid(), "a": a, "b": b, "c": c, "dir": d}


def _file_expect(f: dict[str, Any]) -> list[Expect]:
    pid, a = f["pid"], f["a"]
    creat = os.O_CREAT | os.O_WRONLY | os.O_ACCMODE
    return [
        Expect("open", pid, {"path": a, "open_flags": Masked(creat, os.O_CREAT | os.O_WRONLY), "mode": 0o600}),
        Expect("chmod", pid, {"path": a, "mode": 0o640}),
        Expect("chown", pid, {"path": a, "uid": 1234, "gid": 5678}),
        Expect("utimes", pid, {"path": a, "at_flags": _AT_SYMLINK_NOFOLLOW}),
        Expect("setxattr", pid, {"path": a, "name": "user.hids", "size": 6, "fd": -1}),
        Expect("removexattr", pid, {"path": a, "name": "user.hids", "fd": -1}),
        Expect("link", pid, {"oldpath": a, "newpath": f["b"]}),
        Expect("rename", pid, {"oldpath": f["b"], "newpath": f["c"]}),
        Expect("unlink", pid, {"path": f["c"]}),
        Expect("mkdir", pid, {"path": f["dir"], "mode": 0o750}),
        Expect("rmdir", pid, {"path": f["dir"]}),
    ]


# --- kernel: mount, umount, bpf, ptrace, module load, OOM kill -----------------------------------

def _module_load(module: str | None) -> dict[str, Any]:
    """finit_module and init_module of a real module of this kernel (unloaded after each), or of a
    file that is no module when the guest has none: the hooks fire on entry either way."""
    path = module or sys.argv[0]
    image = open(path, "rb").read()
    name = os.path.basename(path).split(".")[0].replace("-", "_").encode()
    fd = os.open(path, os.O_RDONLY)
    try:
        errors = [0 if _syscall("finit_module", fd, b"hids_verify=1", 0) == 0 else ctypes.get_errno()]
        _syscall("delete_module", name, os.O_NONBLOCK)
    finally:
        os.close(fd)
    buf = ctypes.create_string_buffer(image, len(image))
    errors.append(0 if _syscall("init_module", buf, ctypes.c_ulong(len(image)), b"hids_verify=2") == 0
                  else ctypes.get_errno())
    _syscall("delete_module", name, os.O_NONBLOCK)
    return {"module": module, "module_fd": fd, "module_len": len(image),
            "module_errors": [os.strerror(e) if e else "loaded" for e in errors]}


def _ptrace() -> dict[str, Any]:
    target = os.fork()
    if target == 0:
        time.sleep(60)
        os._exit(0)
    libc = _libc()
    libc.ptrace.restype = ctypes.c_long
    try:
        if libc.ptrace(ctypes.c_long(_PTRACE_ATTACH), target, None, None) != 0:
            raise OSError(ctypes.get_errno(), "PTRACE_ATTACH")
        os.waitpid(target, 0)
        libc.ptrace(ctypes.c_long(_PTRACE_PEEKDATA), target, ctypes.c_void_p(_PEEK_ADDR), None)
        libc.ptrace(ctypes.c_long(_PTRACE_DETACH), target, None, None)
    finally:
        os.kill(target, 9)
        os.waitpid(target, 0)
    return {"ptrace_target": target}


def memory_controller_absent(root: str = _CGROUP) -> str:
    """Why no memory-limited cgroup can be made under `root`, from the guest's own files; '' when it can."""
    path = f"{root}/cgroup.controllers"
    try:
        controllers = open(path).read().split()
    except FileNotFoundError:
        return f"no cgroup2 hierarchy at {root}: {path} is absent"
    if "memory" not in controllers:
        return f"{path} lacks memory (it lists: {' '.join(controllers) or 'nothing'})"
    return ""


def _oom(work: str) -> dict[str, Any]:
    """A child in a cgroup limited to 32 MiB touches 256 MiB: the memcg OOM killer takes it. A
    guest without the memory controller cannot be made to OOM that way: n/a, with its proof."""
    absent = memory_controller_absent()
    if absent:
        return {"oom_na": absent}
    with open(f"{_CGROUP}/cgroup.subtree_control", "w") as ctl:
        ctl.write("+memory")
    group = f"{_CGROUP}/hids-oom-{os.path.basename(work)}"
    os.makedirs(group, exist_ok=True)
    with open(f"{group}/memory.max", "w") as limit:
        limit.write(str(_OOM_LIMIT))
    victim = os.fork()
    if victim == 0:
        with open(f"{group}/cgroup.procs", "w") as procs:
            procs.write(str(os.getpid()))
        hog = b"\1" * (256 << 20)
        os._exit(len(hog) & 1)
    _, status = os.waitpid(victim, 0)
    os.rmdir(group)
    if not os.WIFSIGNALED(status) or os.WTERMSIG(status) != 9:
        raise RuntimeError(f"the OOM victim {victim} was not killed (wait status {status:#x})")
    return {"oom_victim": victim}


class _BpfMapAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("pad", ctypes.c_uint8 * 56)]


def _kernel(work: str, module: str | None) -> dict[str, Any]:
    facts: dict[str, Any] = {"pid": os.getpid(), "target": os.path.join(work, "mnt")}
    os.makedirs(facts["target"], exist_ok=True)
    libc = _libc()
    if libc.mount(b"hids-src", facts["target"].encode(), b"tmpfs", ctypes.c_ulong(_MS_NOSUID | _MS_NODEV),
                  b"size=1m") != 0:
        raise OSError(ctypes.get_errno(), "mount")
    if libc.umount2(facts["target"].encode(), _MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), "umount2")
    attr = _BpfMapAttr(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY, one u32
    fd = _syscall("bpf", 0, ctypes.byref(attr), ctypes.sizeof(attr))  # BPF_MAP_CREATE
    if fd < 0:
        raise OSError(ctypes.get_errno(), "bpf(BPF_MAP_CREATE)")
    os.close(fd)
    facts["bpf_attr_size"] = ctypes.sizeof(attr)
    facts.update(_ptrace())
    facts.update(_module_load(module))
    facts.update(_oom(work))
    facts["pids"] = [facts["pid"]] + ([facts["oom_victim"]] if "oom_victim" in facts else [])
    return facts


def _kernel_expect(f: dict[str, Any]) -> list[Expect]:
    pid = f["pid"]
    return [
        Expect("mount", pid, {"source": "hids-src", "target": f["target"], "fstype": "tmpfs",
                              "mount_flags": _MS_NOSUID | _MS_NODEV}),
        Expect("umount", pid, {"target": f["target"], "umount_flags": _MNT_DETACH}),
        Expect("bpf", pid, {"cmd": 0, "attr_size": f["bpf_attr_size"]}),
        Expect("ptrace", pid, {"request": _PTRACE_ATTACH, "target_pid": f["ptrace_target"]}),
        Expect("ptrace", pid, {"request": _PTRACE_PEEKDATA, "target_pid": f["ptrace_target"], "addr": _PEEK_ADDR}),
        Expect("module_load", pid, {"fd": f["module_fd"], "module_flags": 0, "args": "hids_verify=1"}),
        Expect("module_load", pid, {"fd": -1, "len": f["module_len"], "args": "hids_verify=2"}),
        Expect("oom_kill", pid, na=f["oom_na"]) if f.get("oom_na") else
        Expect("oom_kill", f["oom_victim"], {"victim_pid": f["oom_victim"]}),
    ]


# --- network: TCP over IPv4 and IPv6 loopback ---------------------------------------------------

_INET6 = "/proc/net/if_inet6"  # present exactly when the kernel runs IPv6


def _tcp_pair(family: socket.AddressFamily, host: str) -> dict[str, Any]:
    """connect, accept and close of one TCP connection over `host`: the fds and ports each event carries."""
    srv = socket.socket(family)
    srv.bind((host, 0))
    srv.listen(1)
    cli = socket.socket(family)
    cli.connect(srv.getsockname()[:2])  # blocking, so connect returns 0 (a timeout would make it -EINPROGRESS)
    conn, _ = srv.accept()
    facts = {"host": host, "port": srv.getsockname()[1], "cport": cli.getsockname()[1],
             "srv_fd": srv.fileno(), "cli_fd": cli.fileno(), "conn_fd": conn.fileno()}
    conn.close()
    cli.close()
    srv.close()
    return facts


def _network(_work: str, _module: str | None) -> dict[str, Any]:
    facts: dict[str, Any] = {"pid": os.getpid(), "pids": [os.getpid()], "v4": _tcp_pair(socket.AF_INET, "127.0.0.1")}
    if os.path.exists(_INET6):
        facts["v6"] = _tcp_pair(socket.AF_INET6, "::1")
    else:
        facts["v6_na"] = f"the guest's kernel runs no IPv6: {_INET6} is absent"
    return facts


def _pair_expect(pid: int, family: int, c: dict[str, Any]) -> list[Expect]:
    tcp = {"family": family, "protocol": socket.IPPROTO_TCP, "saddr": c["host"], "daddr": c["host"]}
    return [
        Expect("connect", pid, {**tcp, "fd": c["cli_fd"], "ret": 0, "sport": c["cport"], "dport": c["port"]}),
        Expect("accept", pid, {**tcp, "fd": c["conn_fd"], "listen_fd": c["srv_fd"], "sport": c["port"],
                               "dport": c["cport"]}),
        Expect("close", pid, {**tcp, "fd": c["conn_fd"], "sport": c["port"], "dport": c["cport"]}),
    ]


def _network_expect(f: dict[str, Any]) -> list[Expect]:
    pid = f["pid"]
    v4 = _pair_expect(pid, socket.AF_INET, f["v4"])
    if f.get("v6_na"):
        return v4 + [Expect(e.kind, pid, na=f["v6_na"]) for e in v4]
    return v4 + _pair_expect(pid, socket.AF_INET6, f["v6"])


WORKLOADS: dict[str, Callable[[str, str | None], dict[str, Any]]] = {
    "process": _process, "file": _file, "kernel": _kernel, "network": _network}
_EXPECT: dict[str, Callable[[dict[str, Any]], list[Expect]]] = {
    "process": _process_expect, "file": _file_expect, "kernel": _kernel_expect, "network": _network_expect}


def expectations(program: str, facts: dict[str, Any]) -> list[Expect]:
    """The events `program`'s workload with these facts must have produced."""
    return _EXPECT[program](facts)


def main(argv: list[str]) -> int:
    program, work = argv[1], argv[2]
    module = argv[3] if len(argv) > 3 else None
    os.makedirs(work, exist_ok=True)
    print(json.dumps(WORKLOADS[program](work, module)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
