"""benchmarks/fullsize_imagewoof.py --tiny: the imagewoof preset through every stage on stand-ins in the official
formats (an official-layout DiT, a diffusers AutoencoderKL, an ImageNet-style folder), one process per stage."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow      # eight child processes and the whole pipeline at 64 px: ~2 minutes on 2 CPU cores
def test_the_tiny_fullsize_benchmark_runs_every_stage_and_records_time_and_memory(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fullsize_imagewoof.py"), "--tiny", "--work",
                        str(tmp_path / "w"), "--out", str(out), "--set", 'evaluate.models=["convnet6"]',
                        "--set", 'evaluate.baselines=["random"]'], env=env, capture_output=True, text=True,
                       timeout=1500, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [s["stage"] for s in res["stages"]] == ["base", "finetune", "choose", "sample", "extras", "baselines",
                                                   "evaluate", "metrics", "report"]   # extras: none asked, 0 s
    assert all(s["time_s"] >= 0 and s["peak_rss_mb"] > 0 for s in res["stages"])
    run = tmp_path / "w" / "run"
    # the fine-tuned checkpoint holds the Difffit tensors only, on top of the official-format base
    ft = Path(res["finetuned_checkpoint"]["path"])
    assert set(k.split(".", 1)[0] for k in load_file(str(ft))) == {"model", "ema"}
    assert res["finetuned_checkpoint"]["mb"] < res["files"]["dit_mb"]
    # hard and soft labels in tables of their own, random real under both; the metrics stage ran
    protocols = {(r["method"], r["protocol"]) for r in res["results"]}
    assert {("minimax", "idc"), ("random", "idc"), ("minimax", "idc-soft"), ("random", "idc-soft")} <= protocols
    assert (run / "metrics.json").exists()
    report = (run / "report.md").read_text()
    assert report.count("Generation accuracy of the minimax set at IPC 2") == 1
    assert "`idc-soft` protocol" in report and "## Diagnostics" in report
    man = json.loads((run / "sample" / "ipc2" / "manifest.json").read_text())
    assert man["wall_time_s"] >= man["sample_time_s"] > 0
