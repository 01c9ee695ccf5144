#!/usr/bin/env bash
# Regenerate BENCHMARKS.md (or the file given) from the prose parts and the result JSON files.
set -euo pipefail
out=${1:-}
case "$out" in "") ;; /*) ;; *) out="$PWD/$out" ;; esac   # a relative path is the caller's
cd "$(dirname "$0")/.."
out=${out:-$PWD/BENCHMARKS.md}
py=${PY:-.venv/bin/python}
{
  $py benchmarks/tables.py fill benchmarks/BENCHMARKS.head.md
  $py benchmarks/tables.py calibration
  cat benchmarks/BENCHMARKS.tail.md
  $py benchmarks/tables.py throughput
  $py benchmarks/tables.py fill benchmarks/BENCHMARKS.end.md
  if [ -f benchmarks/BENCHMARKS.dm.md ]; then
    cat benchmarks/BENCHMARKS.dm.md
    $py benchmarks/tables.py dm
  fi
  if [ -f benchmarks/BENCHMARKS.fashion.md ]; then cat benchmarks/BENCHMARKS.fashion.md; fi
  if [ -f benchmarks/BENCHMARKS.distill.md ]; then cat benchmarks/BENCHMARKS.distill.md; fi
  if [ -f benchmarks/BENCHMARKS.generator.md ]; then cat benchmarks/BENCHMARKS.generator.md; fi
  if [ -f benchmarks/BENCHMARKS.fullsize.md ]; then cat benchmarks/BENCHMARKS.fullsize.md; fi
  if [ -f benchmarks/BENCHMARKS.precision.md ]; then cat benchmarks/BENCHMARKS.precision.md; fi
  if [ -f benchmarks/BENCHMARKS.redesign.md ]; then cat benchmarks/BENCHMARKS.redesign.md; fi
  if [ -f benchmarks/BENCHMARKS.flips.md ]; then cat benchmarks/BENCHMARKS.flips.md; fi
  if [ -f benchmarks/BENCHMARKS.coverage.md ]; then cat benchmarks/BENCHMARKS.coverage.md; fi
  if [ -f benchmarks/BENCHMARKS.protocols.md ]; then cat benchmarks/BENCHMARKS.protocols.md; fi
} > "$out"
