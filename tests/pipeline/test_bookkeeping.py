"""The stage bookkeeping every distill stage shares: run once, skip when done, rerun on a new key, resume."""
from __future__ import annotations

import json

import torch

from minimaxdd.pipeline.bookkeeping import StageRun, key_of

CPU = torch.device("cpu")


def test_a_done_stage_is_skipped_and_a_changed_key_reruns_it_afresh(tmp_path, capsys):
    calls = []

    def body(st: StageRun) -> dict:
        calls.append(st.key)
        (st.dir / "item.txt").write_text(st.key)
        return st.finish(CPU, made=st.key)

    first = StageRun(tmp_path, "demo", key_of("a"), {"x": 1}, force=False).run(CPU, body)
    assert first["made"] == key_of("a") and first["done"] and first["config"] == {"x": 1}
    again = StageRun(tmp_path, "demo", key_of("a"), {"x": 1}, force=False).run(CPU, body, note=lambda r: " (old)")
    assert again == first and calls == [key_of("a")]          # the body did not run again
    assert "demo: done (old), skipped" in capsys.readouterr().out
    forced = StageRun(tmp_path, "demo", key_of("a"), {"x": 1}, force=True).run(CPU, body)
    assert forced["done"] and len(calls) == 2
    StageRun(tmp_path, "demo", key_of("b"), {"x": 2}, force=False).run(CPU, body)
    assert calls[-1] == key_of("b") and (tmp_path / "demo" / "item.txt").read_text() == key_of("b")


def test_an_interrupted_stage_keeps_its_folder_and_is_resumable(tmp_path):
    def interrupted(st: StageRun) -> dict:
        (st.dir / "ckpt.pt").write_text("half")
        raise KeyboardInterrupt

    try:
        StageRun(tmp_path, "demo", key_of("a"), {}, force=False).run(CPU, interrupted)
    except KeyboardInterrupt:
        pass
    assert json.loads((tmp_path / "demo" / "stage.json").read_text())["done"] is False
    st = StageRun(tmp_path, "demo", key_of("a"), {}, force=False)
    assert st.resumable and not st.done
    seen = st.run(CPU, lambda st: st.finish(CPU, had=(st.dir / "ckpt.pt").read_text()))
    assert seen["had"] == "half"                     # begin kept what the interrupted run wrote
    other = StageRun(tmp_path, "demo", key_of("b"), {}, force=False)
    assert not other.resumable
    other.run(CPU, lambda st: st.finish(CPU))
    assert not (tmp_path / "demo" / "ckpt.pt").exists()   # another key starts afresh
