#!/usr/bin/env bash
# Regenerate BENCHMARKS.md from the prose parts and the result JSON files.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
{
  cat benchmarks/BENCHMARKS.head.md
  $py benchmarks/tables.py | sed -n '/^### calibration/,/^### throughput/p' | sed '$d'
  cat benchmarks/BENCHMARKS.tail.md
  $py benchmarks/tables.py | sed -n '/^### throughput/,$p' | tail -n +3
  cat benchmarks/BENCHMARKS.end.md
} > BENCHMARKS.md
