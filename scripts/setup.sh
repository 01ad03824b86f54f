#!/usr/bin/env bash
# Sets up a fresh Debian (bookworm) machine, as root, for building and testing hids-bytecode:
# apt packages, a running docker engine, kernel filesystems for eBPF, and a Python venv (.venv).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  docker.io debootstrap ca-certificates     # toolchain image, built without a registry
  libbpf1 bpftool                            # the loader's libbpf; bpftool backend and vmlinux.h
  clang-19 llvm-19                           # runtime-compilation fallback on the host
  qemu-system-x86 qemu-system-arm cpio zstd  # invoke verify: boot each target kernel
  chromium fonts-dejavu-core                 # tests: dist/compat.html rendered headless
  gcc libc6-dev                              # invoke bench: the event load generator (hidsbuild/loadgen.c)
  python3 python3-venv
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! docker info >/dev/null 2>&1; then
  echo "setup: starting dockerd"
  nohup dockerd >/var/log/hids-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start, see /var/log/hids-dockerd.log" >&2; exit 1; }
fi

mountpoint -q /sys/fs/bpf || mount -t bpf -o mode=0700 bpf /sys/fs/bpf
# A bpffs mounted 1777 by someone else lets any user create /sys/fs/bpf/hids first (docs/THREAT_MODEL.md).
if [ "$(stat -c %a /sys/fs/bpf)" != 700 ]; then
  echo "setup: /sys/fs/bpf was mode $(stat -c %a /sys/fs/bpf); now 0700"
  chmod 0700 /sys/fs/bpf
fi
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug || true

python=python3
command -v "$python" >/dev/null || python=python
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# Both packages editable: tests and tasks import hidsbuild and hids_bytecode without path edits.
.venv/bin/python -m pip install -q --disable-pip-version-check -e . -e loader
echo "setup: ready"
