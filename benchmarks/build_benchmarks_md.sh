#!/usr/bin/env bash
# Regenerate BENCHMARKS.md from the prose parts and the result JSON files.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
{
  cat benchmarks/BENCHMARKS.head.md
  $py benchmarks/tables.py calibration
  cat benchmarks/BENCHMARKS.tail.md
  $py benchmarks/tables.py throughput
  $py - <<'PY'
import subprocess, sys
end = open("benchmarks/BENCHMARKS.end.md").read()
table = subprocess.run([sys.executable, "benchmarks/tables.py", "solvers"], capture_output=True, text=True, check=True).stdout
compiled = subprocess.run([sys.executable, "benchmarks/tables.py", "throughput-compiled"], capture_output=True, text=True,
                          check=True).stdout
speed = subprocess.run([sys.executable, "benchmarks/tables.py", "speed"], capture_output=True, text=True, check=True).stdout
sys.stdout.write(end.replace("SOLVERS_TABLE\n", table).replace("THROUGHPUT_COMPILED\n", compiled)
                 .replace("SPEED_TABLE\n", speed))
PY
  if [ -f benchmarks/BENCHMARKS.dm.md ]; then
    cat benchmarks/BENCHMARKS.dm.md
    $py benchmarks/tables.py dm
  fi
  if [ -f benchmarks/BENCHMARKS.fashion.md ]; then cat benchmarks/BENCHMARKS.fashion.md; fi
  if [ -f benchmarks/BENCHMARKS.distill.md ]; then cat benchmarks/BENCHMARKS.distill.md; fi
} > BENCHMARKS.md
