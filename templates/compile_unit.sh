#!/bin/sh
# Compiles one unit inside the toolchain container: clang -> LLVM IR -> llc -> BPF object,
# then strips DWARF (keeping .BTF/.BTF.ext). Writes the object, the compiler's stderr and the
# pure compile time (ns) under /out/<unit>/; a failure in any step fails the unit.
# Usage: compile_unit.sh UNIT_DIR  (UNIT_DIR holds `args`: clang arguments, one per line)
set -u
dir="$1"
out="/out/$dir"
start=$(date +%s%N)
status=0
{
  xargs -d '\n' -a "$out/args" clang -emit-llvm -c -o "$out/unit.bc" &&
  llc -march=bpf -mcpu=v2 -filetype=obj -o "$out/unit.o.tmp" "$out/unit.bc" &&
  llvm-strip -g "$out/unit.o.tmp" &&
  mv "$out/unit.o.tmp" "$out/unit.o"
} 2> "$out/stderr" || status=$?
end=$(date +%s%N)
rm -f "$out/unit.bc" "$out/unit.o.tmp"
# The host polls for `result`: rename it into place so it is never seen half-written.
echo "$status $((end - start))" > "$out/result.tmp" && mv "$out/result.tmp" "$out/result"
