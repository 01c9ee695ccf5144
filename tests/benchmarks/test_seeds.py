"""benchmarks/seeds.py: the config each seed's stages run with."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("seeds", ROOT / "benchmarks" / "seeds.py")
seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seeds)


def test_the_seed_config_keeps_the_runs_first_classifier_and_random_real_unless_left_out(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"data": "digits", "ipc": [10], "evaluate": {"models": ["convnet3", "resnet18"],
                                                     "baselines": ["random", "herding"], "full_epochs": 5}}))
    cfg = seeds.seeds_config(tmp_path, [2, 3], 0, None, "cpu")
    assert cfg.ipc == [2, 3] and cfg.evaluate.models == ["convnet3"]
    assert cfg.evaluate.baselines == ["random"] and cfg.evaluate.full_epochs == 0 and not cfg.evaluate.metrics
    assert seeds.seeds_config(tmp_path, None, 0, None, "cpu", random=False).evaluate.baselines == []
    with_control = seeds.seeds_config(tmp_path, None, 0, None, "cpu", random=False, controls=["medoids"])
    assert with_control.evaluate.baselines == ["medoids"]
    assert seeds.seeds_config(tmp_path, None, 0, None, "cpu", controls=["medoids"]).evaluate.baselines == [
        "random", "medoids"]
