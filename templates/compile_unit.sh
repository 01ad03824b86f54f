#!/bin/sh
# Compiles one unit inside the toolchain container by running its `steps`: the argv lists that
# hidsbuild/compile.py rendered from the unit's compile recipe (loader/hids_bytecode/recipe.py),
# one shell-quoted command per line. Writes the compiler's stderr, the pure compile time (ns) and
# the CPU time after each step under /out/<unit>/ (`result`: status, ns, pch|plain; `cpu`); a
# failure in any step fails the unit.
# Usage: compile_unit.sh UNIT_DIR   (UNIT_DIR holds `steps`, and optionally `pch`: the id of a
#                                    shared header built below, and `steps.pch`: the steps reading it)
#        compile_unit.sh --pch ID   (/out/pch/ID holds `header.h`, `args` and `excluded`:
#                                    precompiles the header to /tmp/pch/ID.pch, writes `result`
#                                    and `cpu` there; see docs/DESIGN.md)
#        compile_unit.sh --group GROUP_DIR   (units whose clang step differs only in the source:
#                                    `members`, their unit dirs; `steps` and, with a shared header,
#                                    `pch` and `steps.pch`: one clang for every member's source
#                                    (its bitcode lands in /out/GROUP_DIR), then the rest; writes
#                                    `clock` and `cpu` after each step, then each member's `result`)
# A unit whose PCH is missing or fails compiles without it: the PCH only saves time, the
# object is the same either way.
set -u

if [ "$1" = "--pch" ]; then
  dir="/out/pch/$2"
  pch="/tmp/pch/$2.pch"
  mkdir -p /tmp/pch
  start=$(date +%s%N)
  status=0
  xargs -d '\n' -a "$dir/args" clang -MD -MF "$dir/deps" -x c-header "$dir/header.h" -o "$pch.tmp" \
    2> "$dir/stderr" || status=$?
  # The excluded variant macros are defined (0) while the PCH is parsed and get their value only
  # after it: no file it read may test that value (#if/#elif naming one outside defined()).
  if [ "$status" = 0 ] && sed 's/\\$//; s/^[^:]*://' "$dir/deps" | tr ' ' '\n' | grep . |
      xargs -r grep -h -E '^[[:space:]]*#[[:space:]]*(el)?if([^a-z_]|$)' |
      sed -E 's/defined[[:space:]]*[(]?[[:space:]]*[A-Za-z_0-9]+[[:space:]]*[)]?//g' |
      grep -w -F -f "$dir/excluded" > "$dir/readers"; then
    status=excluded
  fi
  [ "$status" = 0 ] && mv "$pch.tmp" "$pch"
  end=$(date +%s%N)
  times > "$dir/cpu"
  rm -f "$pch.tmp"
  echo "$status $((end - start))" > "$dir/result.tmp" && mv "$dir/result.tmp" "$dir/result"
  exit 0
fi

if [ "$1" = "--group" ]; then
  group="/out/$2"
  steps=steps
  if [ -f "$group/pch" ] && [ -f "/tmp/pch/$(cat "$group/pch").pch" ]; then
    steps=steps.pch
  fi
  cd "$group" || exit 0
  date +%s%N > clock
  times > cpu
  status=0
  while IFS= read -r step; do
    eval "$step" 2>> stderr || { status=$?; break; }
    date +%s%N >> clock
    times >> cpu
  done < "$steps"
  rm -f ./*.bc
  # A unit's errors and warnings are its own: a group that failed or said anything is compiled
  # again unit by unit (same objects), so each unit records what its compile printed.
  if [ "$status" != 0 ] || [ -s stderr ]; then
    for unit in $(cat members); do "$0" "$unit"; done
    exit 0
  fi
  how=grouped-plain
  [ "$steps" = steps.pch ] && how=grouped-pch
  for unit in $(cat members); do
    echo "0 0 $how" > "/out/$unit/result.tmp" && mv "/out/$unit/result.tmp" "/out/$unit/result"
  done
  exit 0
fi

dir="$1"
out="/out/$dir"
steps=steps.pch
if [ ! -f "$out/pch" ] || [ ! -f "/tmp/pch/$(cat "$out/pch").pch" ]; then
  steps=steps
fi

run() {  # a steps file: each line one command, its words quoted by the host
  # `times` (a builtin: no process) before and after each step gives the CPU its tools used
  # (children's user and system time, the second line), for the bench's profile.
  times > "$out/cpu"
  while IFS= read -r step; do
    eval "$step" || return $?
    times >> "$out/cpu"
  done < "$out/$1"
}

start=$(date +%s%N)
status=0
how=pch
if [ "$steps" = steps ] || ! run steps.pch 2> "$out/stderr"; then
  how=plain
  run steps 2> "$out/stderr" || status=$?
fi
end=$(date +%s%N)
rm -f "$out/unit.bc"
# The host polls for `result`: rename it into place so it is never seen half-written.
echo "$status $((end - start)) $how" > "$out/result.tmp" && mv "$out/result.tmp" "$out/result"
