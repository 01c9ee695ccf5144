"""The `choose` stage: sampling settings picked on a validation split of the training set, never the test set."""
import json
from types import SimpleNamespace

import pytest
import torch

from minimaxdd.cli import main
from minimaxdd.data.dataset import validation_split
from minimaxdd.evaluation import train_test
from minimaxdd.pipeline.choice import candidates
from minimaxdd.pipeline.config import build_config


def test_validation_split_is_stratified_disjoint_and_seeded(digits):
    tr, va = validation_split(digits, 0.1, seed=3)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == len(digits.y_train)
    counts = torch.bincount(digits.y_train[va], minlength=10)
    per_class = torch.bincount(digits.y_train, minlength=10)
    assert torch.equal(counts, (0.1 * per_class.double()).round().long().clamp_min(1))
    assert torch.equal(va, validation_split(digits, 0.1, seed=3)[1])
    assert not torch.equal(va, validation_split(digits, 0.1, seed=4)[1])


def test_candidates_are_every_pair_or_the_sample_settings():
    cfg = build_config(None, {"data": "digits", "sample": {"cfg": 1.5}})
    assert candidates(cfg) == [{"cfg": 1.5, "steps": None}]
    cfg = build_config(None, {"data": "digits", "choose": {"cfg": [1, 2], "steps": [4, 8]}})
    assert candidates(cfg) == [{"cfg": 1.0, "steps": 4}, {"cfg": 1.0, "steps": 8}, {"cfg": 2.0, "steps": 4},
                               {"cfg": 2.0, "steps": 8}]


@pytest.mark.slow      # a small pipeline run, about 20 s
def test_choose_scores_on_training_images_only_and_samples_with_the_winner(tmp_path, monkeypatch, digits):
    scored, real = [], train_test.evaluate_set

    def spy(x, y, x_test, y_test, *a, **kw):
        scored.append((len(x), x_test.clone(), y_test.clone()))
        return real(x, y, x_test, y_test, *a, **kw)
    monkeypatch.setattr(train_test, "evaluate_set", spy)
    run = tmp_path / "run"
    argv = ["distill", "--data", "digits", "--ipc", "2", "--device", "cpu",
            "--set", 'base.train={"model": "dit-n/2", "formulation": "edm", "steps": 6, "batch": 32, "flip": false}',
            "--set", "finetune.objective=none", "--set", "sample.steps=3",
            "--set", "choose.cfg=[1, 2]", "--set", "evaluate.repeats=1", "--set", "evaluate.epochs=2",
            "--set", "evaluate.full_epochs=0", "--set", 'evaluate.baselines=["random"]',
            "--set", "evaluate.metrics=false", "--out", str(run)]
    assert main(argv) == 0
    rec = json.loads((run / "choose" / "stage.json").read_text())
    assert [s["cfg"] for s in rec["scores"]] == [1.0, 2.0] and rec["val_images"] == 136
    best = max(rec["scores"], key=lambda s: s["val_accuracy"])
    assert rec["sample"] == {"cfg": best["cfg"], "steps": 3}
    # two candidates, each 2 images per class, scored on the held-out *training* images (the seed's split);
    # only the evaluate stage's rows after them see the test set
    _, va = validation_split(digits, 0.1, seed=0)
    for n, xv, yv in scored[:2]:
        assert n == 20 and torch.equal(xv, digits.x_train[va]) and torch.equal(yv, digits.y_train[va])
    assert all(torch.equal(xv, digits.x_test) for _, xv, _ in scored[2:]) and len(scored) == 4
    man = json.loads((run / "sample" / "ipc2" / "manifest.json").read_text())
    assert man["config"]["cfg"] == best["cfg"]
    assert "Sampling settings chosen on training data" in (run / "report.md").read_text()


@pytest.mark.slow      # a small pipeline run, about 15 s
def test_per_ipc_choice_samples_each_ipc_with_its_own_winner(tmp_path, monkeypatch):
    """choose.per_ipc: candidates scored at every IPC; when the winners differ each IPC is sampled with its own
    (the scores are rigged so IPC 2 prefers guidance 1 and IPC 3 guidance 2)."""
    from minimaxdd.data.synthetic import load_synthetic
    from minimaxdd.errors import UserError
    from minimaxdd.pipeline import choice
    calls = []

    def rigged(cfg, ckpt, cand, ds, split, ipc, out, device):
        calls.append((ipc, cand["cfg"]))
        return 0.6 if (ipc == 2) == (cand["cfg"] == 1.0) else 0.5
    monkeypatch.setattr(choice, "_score", rigged)
    run = tmp_path / "run"
    argv = ["distill", "--data", "digits", "--ipc", "2,3", "--device", "cpu",
            "--set", 'base.train={"model": "dit-n/2", "formulation": "edm", "steps": 6, "batch": 32, "flip": false}',
            "--set", "finetune.objective=none", "--set", "sample.steps=3", "--set", "choose.cfg=[1, 2]",
            "--set", "choose.per_ipc=true", "--set", "evaluate.repeats=1", "--set", "evaluate.epochs=1",
            "--set", "evaluate.full_epochs=0", "--set", "evaluate.baselines=[]", "--set", "evaluate.metrics=false",
            "--set", "extras.pool=2", "--out", str(run)]
    assert main(argv) == 0
    assert calls == [(2, 1.0), (2, 2.0), (3, 1.0), (3, 2.0)]
    # the extras' pools follow each IPC's choice: each IPC's own set is the first IPC of its pool
    for k, pool in ((2, "pool-ipc2"), (3, "pool")):
        p, ours = load_synthetic(run / "extras" / pool), load_synthetic(run / "sample" / f"ipc{k}")
        assert torch.bincount(p.labels).tolist() == [2 * k] * 10
        assert all(torch.equal(p.images[p.labels == c][:k], ours.images[ours.labels == c]) for c in range(10))
    rec = json.loads((run / "choose" / "stage.json").read_text())
    assert rec["by_ipc"] == {"2": {"cfg": 1.0, "steps": 3}, "3": {"cfg": 2.0, "steps": 3}}
    for k, g in ((2, 1.0), (3, 2.0)):
        assert json.loads((run / "sample" / f"ipc{k}" / "manifest.json").read_text())["config"]["cfg"] == g
        assert torch.bincount(load_synthetic(run / "sample" / f"ipc{k}").labels).tolist() == [k] * 10
    report = (run / "report.md").read_text()
    assert "IPC 2: {'cfg': 1.0, 'steps': 3}; IPC 3: {'cfg': 2.0, 'steps': 3}" in report and "| 2.0 | 3 | 3 |" in report
    rows = {(r["method"], r["ipc"]) for r in json.loads((run / "results.json").read_text())}
    assert {r for r in rows if "pool" not in r[0]} == {("diffusion", 2), ("diffusion", 3)}
    stamp = (run / "sample" / "stage.json").stat().st_mtime_ns
    assert main(argv) == 0 and (run / "sample" / "stage.json").stat().st_mtime_ns == stamp     # skipped on rerun
    with pytest.raises(UserError, match="set one of them"):
        build_config(None, {"data": "digits", "choose": {"per_ipc": True, "ipc": 10}})


def test_the_guides_knobs_are_candidates_and_name_their_own_rows():
    from minimaxdd.diffusion.generation import without_default_guides
    from minimaxdd.pipeline.choice import choice_conf
    from minimaxdd.pipeline.config import method_name
    from minimaxdd.settings import to_dict
    plain = build_config(None, {"data": "digits"})
    assert method_name(plain) == "minimax"
    # at their defaults the guides stay out of the stage keys: earlier runs' keys hold
    assert without_default_guides(to_dict(plain.sample)).keys() == {
        "sampler", "steps", "spacing", "cfg", "cfg_channels", "batch_size", "weights", "precision", "compile",
        "budget_minutes"}
    assert choice_conf(plain).keys() == {"cfg", "steps", "val_fraction", "ipc", "epochs", "repeats"}
    cfg = build_config(None, {"data": "digits", "choose": {"cfg": [1, 2], "mode_guidance": [0, 0.1],
                                                           "deviation": [0.2]}})
    assert candidates(cfg) == [{"cfg": c, "steps": None, "mode_guidance": m, "deviation": 0.2}
                               for c in (1.0, 2.0) for m in (0.0, 0.1)]
    assert method_name(cfg) == "minimax+modes+deviation"
    assert method_name(build_config(None, {"data": "digits", "sample": {"mode_guidance": 0.5,
                                                                        "mode_space": "features"}})) == \
        "minimax+feature-modes"
    for space, name in (("model", "minimax+medoid-modes"), ("features", "minimax+feature-medoid-modes")):
        medoid = build_config(None, {"data": "digits", "choose": {"mode_guidance": [0.5, 1.0]},
                                     "sample": {"mode_space": space, "mode_target": "medoid"}})
        assert method_name(medoid) == name
    assert method_name(build_config(None, {"data": "digits", "finetune": {"objective": "none"},
                                           "sample": {"cfg_sigma_lo": 0.28, "cfg_sigma_hi": 5.42}})) == \
        "diffusion+interval"
    from minimaxdd.errors import UserError
    with pytest.raises(UserError, match=r"choose.mode_guidance must be in \[0, 1\]"):
        build_config(None, {"data": "digits", "choose": {"mode_guidance": [1.5]}})
    with pytest.raises(UserError, match=r"sample.deviation.*at least 0"):
        build_config(None, {"data": "digits", "sample": {"deviation": -1}})


def test_finetune_settings_added_later_stay_out_of_its_stage_key_at_the_value_older_runs_used():
    """edm_transfer and embedding came after runs existed: at native / pixel the fine-tune key is the one those
    runs recorded, so they resume instead of fine-tuning again; any other value keys (and reruns) its own stage."""
    from minimaxdd.settings import to_dict
    from minimaxdd.training.finetune import key_settings
    settings = to_dict(build_config(None, {"data": "digits"}).finetune)
    older = {k: v for k, v in settings.items() if k not in ("edm_transfer", "embedding")}
    assert key_settings(settings) == older and len(older) == len(settings) - 2
    for change in ({"edm_transfer": "paper"}, {"edm_transfer": "weight"}, {"embedding": "centred"}):
        assert key_settings({**settings, **change}) == {**older, **change}


@pytest.mark.slow      # a small pipeline run, about 20 s
def test_a_mode_guided_run_samples_each_ipc_with_its_own_modes_and_reports_its_own_row(tmp_path):
    from minimaxdd.data.synthetic import load_synthetic
    run = tmp_path / "run"
    argv = ["distill", "--data", "digits", "--ipc", "2,3", "--device", "cpu",
            "--set", 'base.train={"model": "dit-n/2", "formulation": "edm", "steps": 6, "batch": 32, "flip": false}',
            "--set", "finetune.objective=none", "--set", "sample.steps=3", "--set", "sample.mode_guidance=1.0",
            "--set", "sample.mode_stop=0", "--set", "evaluate.repeats=1", "--set", "evaluate.epochs=1",
            "--set", "evaluate.full_epochs=0", "--set", "evaluate.baselines=[]", "--set", "evaluate.metrics=false",
            "--out", str(run)]
    assert main(argv) == 0
    a, b = load_synthetic(run / "sample" / "ipc2"), load_synthetic(run / "sample" / "ipc3")
    # strength 1 without a stop: each image is its mode; k = IPC, so IPC 2 is not a prefix of IPC 3
    assert not torch.equal(a.images[a.labels == 0], b.images[b.labels == 0][:2])
    rows = {(r["method"], r["ipc"]) for r in json.loads((run / "results.json").read_text())}
    assert rows == {("diffusion+modes", 2), ("diffusion+modes", 3)}
    assert "| diffusion+modes |" in (run / "report.md").read_text()


@pytest.mark.parametrize("compiled", [False, True])
def test_choose_classifiers_follow_evaluate_compile(monkeypatch, digits, compiled):
    """The validation classifiers are built as the evaluation's are (`evaluate.compile` reaches them), and their
    progress lines call the held-out images what they are."""
    from minimaxdd.pipeline.choice import validation_accuracy
    seen = []

    def spy(*a, **kw):
        seen.append((kw["compile"], kw["held_out"]))
        return SimpleNamespace(mean=0.5)
    monkeypatch.setattr(train_test, "evaluate_set", spy)
    cfg = build_config(None, {"data": "digits", "evaluate": {"compile": compiled}})
    split = validation_split(digits, 0.1, seed=0)
    images, labels = digits.x_train[:20], digits.y_train[:20]
    assert validation_accuracy(cfg, digits, split, images, labels, 2, torch.device("cpu")) == 0.5
    assert seen == [(compiled, "validation")]
