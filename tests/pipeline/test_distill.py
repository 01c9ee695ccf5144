"""The distill pipeline end to end on digits with tiny settings: outputs, stage skipping and reruns."""
import json
import os
import shutil

import pytest
import torch

from minimaxdd.cli import main
from minimaxdd.errors import UserError
from minimaxdd.pipeline.config import build_config, parse_set, precisions

TINY = ["--data", "digits", "--ipc", "2,3", "--device", "cpu",
        "--set", 'base.train={"model": "dit-n/2", "steps": 12, "batch": 32, "checkpoint_every": 6}',
        "--set", "finetune.steps=4", "--set", "sample.steps=3", "--set", "evaluate.repeats=1",
        "--set", "evaluate.epochs=2", "--set", "evaluate.full_epochs=1", "--set", 'evaluate.baselines=["random"]',
        "--set", "choose.cfg=[]"]    # no --preset: the small-data recipe (EDM), without its guidance choice


def mtimes(run, names):
    return {n: os.stat(run / n).st_mtime_ns for n in names}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The module's distill run, shared and so read only: a test that reruns or changes it takes `own_run`."""
    run = tmp_path_factory.mktemp("distill") / "run"
    assert main(["distill", *TINY, "--out", str(run)]) == 0
    return run


@pytest.fixture
def own_run(run_dir, tmp_path):
    """This test's copy of the module's run (file times kept), free to rerun, change or delete from."""
    return shutil.copytree(run_dir, tmp_path / "run")


@pytest.mark.slow      # the whole pipeline (the module's run_dir: about 30 s)
def test_outputs(run_dir):
    rows = json.loads((run_dir / "results.json").read_text())
    methods = {(r["method"], r["ipc"]) for r in rows}
    assert methods == {("minimax", 2), ("minimax", 3), ("random", 2), ("random", 3), ("full", None)}
    for r in rows:
        assert {"method", "ipc", "model", "protocol", "mean", "std", "runs"} <= set(r)
        assert 0 <= r["mean"] <= 1 and len(r["runs"]) == 1
    for k in (2, 3):
        d = json.loads((run_dir / "sample" / f"ipc{k}" / "manifest.json").read_text())
        assert d["config"]["ipc"] == k
        assert d["wall_time_s"] >= d["sample_time_s"] > 0          # the stage's time, not 0.0 (issue 19)
    report = (run_dir / "report.md").read_text()
    assert "| minimax |" in report and "figures/synthetic.png" in report and "## Stages" in report
    for f in ("accuracy.png", "synthetic.png", "random-real.png", "tsne.png"):
        assert (run_dir / "figures" / f).stat().st_size > 0
    m = json.loads((run_dir / "metrics.json").read_text())
    assert set(m["sets"]) == {"minimax (IPC 3)", "random (IPC 3)"}
    # each diagnosed set carries its own accuracy row (the IPC-3 rows of results.json), not another's
    by = {(r["method"], r["ipc"]): r for r in rows}
    for method in ("minimax", "random"):
        acc = m["sets"][f"{method} (IPC 3)"]["accuracy"]
        assert (acc["mean"], acc["std"], acc["model"]) == (by[method, 3]["mean"], by[method, 3]["std"], "convnet3")


@pytest.mark.slow      # the whole pipeline (the module's run_dir: about 30 s)
def test_smaller_ipc_is_prefix_of_larger(run_dir):
    import torch
    a = torch.load(run_dir / "sample" / "ipc2" / "data.pt", weights_only=True)
    b = torch.load(run_dir / "sample" / "ipc3" / "data.pt", weights_only=True)
    for c in range(10):
        assert torch.equal(a["images"][a["labels"] == c], b["images"][b["labels"] == c][:2])


@pytest.mark.slow      # the whole pipeline (the module's run_dir: about 30 s)
def test_rerun_skips_and_changes_rerun_only_what_depends(own_run, capsys):
    stage_files = ["base/stage.json", "finetune/stage.json", "sample/stage.json", "baselines/stage.json",
                   "evaluate/random-ipc2-convnet3.json", "evaluate/minimax-ipc2-convnet3.json"]
    before = mtimes(own_run, stage_files)
    assert main(["distill", *TINY, "--out", str(own_run)]) == 0
    assert mtimes(own_run, stage_files) == before
    assert "base: done" in capsys.readouterr().out
    # another sampler step count: sampling and our rows rerun; base, finetune, baselines and theirs do not
    assert main(["distill", *TINY, "--set", "sample.steps=4", "--out", str(own_run)]) == 0
    after = mtimes(own_run, stage_files)
    for f in ("base/stage.json", "finetune/stage.json", "baselines/stage.json", "evaluate/random-ipc2-convnet3.json"):
        assert after[f] == before[f], f
    for f in ("sample/stage.json", "evaluate/minimax-ipc2-convnet3.json"):
        assert after[f] != before[f], f
    # --from-stage forces that stage and later ones
    assert main(["distill", *TINY, "--set", "sample.steps=4", "--out", str(own_run), "--from-stage", "baselines"]) == 0
    again = mtimes(own_run, stage_files)
    assert again["finetune/stage.json"] == after["finetune/stage.json"]
    assert again["baselines/stage.json"] != after["baselines/stage.json"]


@pytest.mark.slow      # the whole pipeline (the module's run_dir: about 30 s)
def test_interrupted_training_resumes(own_run):
    st = own_run / "base" / "stage.json"
    d = json.loads(st.read_text())
    d["done"] = False
    st.write_text(json.dumps(d))
    final = own_run / "base" / "ckpt-00000012.safetensors"
    final.unlink()
    final.with_suffix(".optim.pt").unlink()
    assert (own_run / "base" / "ckpt-00000006.safetensors").exists()
    assert main(["distill", *TINY, "--set", "sample.steps=4", "--out", str(own_run)]) == 0
    assert final.exists() and json.loads(st.read_text())["done"]
    steps = [json.loads(l)["step"] for l in (own_run / "base" / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 12


def test_config_errors(tmp_path, capsys):
    with pytest.raises(UserError, match=r"unknown setting\(s\) sample.stepz; known under sample: .*steps"):
        build_config(None, {"data": "digits", "sample": {"stepz": 3}})
    with pytest.raises(UserError, match=r"finetune.objectiv;"):
        build_config(None, {"data": "digits", "finetune": {"objectiv": "minimax"}})
    with pytest.raises(UserError, match="ipc takes comma-separated integers"):
        build_config(None, {"data": "digits", "ipc": "ten"})
    with pytest.raises(UserError, match="--data"):
        build_config(None, {})
    # values are type-checked once, and the error names the key, the type and the allowed values
    with pytest.raises(UserError, match=r"base.train.steps: expected int \| null, got 'abc'"):
        build_config(None, {"data": "digits", **parse_set(["base.train.steps=abc"])})
    with pytest.raises(UserError, match=r"sample.sampler: expected str \| null; allowed: ddpm, ddim, euler, heun, "
                                        r"dpm-solver, sde-dpm-solver"):
        build_config(None, {"data": "digits", "sample": {"sampler": "lms"}})
    with pytest.raises(UserError, match=r"finetune.objective: expected str; allowed: none, simple, rep"):
        build_config(None, {"data": "digits", "finetune": {"objective": "minmax"}})
    with pytest.raises(UserError, match=r"evaluate.models\[1\]: expected str; allowed: .*convnet3"):
        build_config(None, {"data": "digits", "evaluate": {"models": ["convnet3", "vgg"]}})
    with pytest.raises(UserError, match=r"evaluate.repeats: expected int, got 2.5"):
        build_config(None, {"data": "digits", "evaluate": {"repeats": 2.5}})
    with pytest.raises(UserError, match=r"unknown setting\(s\) base.train.out"):      # run fields are not settings
        build_config(None, {"data": "digits", "base": {"train": {"out": "x"}}})
    ok = build_config(None, {"data": "digits", "finetune": {"lr": 1}, "ipc": "50,10"})
    assert ok.finetune.lr == 1.0 and isinstance(ok.finetune.lr, float) and ok.ipc == [10, 50]
    assert parse_set(["a.b=3", "a.c=[1,2]", "d=x"]) == {"a": {"b": 3, "c": [1, 2]}, "d": "x"}
    rc = main(["distill", "--data", "digits", "--set", "base.pretrained=/nope/DiT-XL-2-256x256.pt",
               "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "/nope/DiT-XL-2-256x256.pt not found" in capsys.readouterr().err


def test_presets_list_and_resolve(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "digits  [distill]" in out
    assert main(["distill", "--preset", "digits", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["data"] == "digits" and cfg["ipc"] == [10] and cfg["finetune"]["objective"] == "minimax"
    # the typed tree, every default filled in: the preset's values and the stage configs' defaults
    assert cfg["base"]["train"]["model"] == "unet-xs" and cfg["base"]["train"]["formulation"] == "edm"
    assert cfg["base"]["train"]["lr"] == 0.001 and cfg["base"]["train"]["flip"] is False
    assert cfg["finetune"]["lambda_r"] == 0.002 and cfg["finetune"]["memory"] == 64 and cfg["finetune"]["ema"] == 0.997
    assert cfg["sample"]["sampler"] == "heun" and cfg["sample"]["spacing"] == "time"
    assert cfg["choose"]["cfg"] == [1.5, 2.0, 3.0] and cfg["choose"]["val_fraction"] == 0.1
    assert cfg["evaluate"]["dm"]["iterations"] == 20000 and cfg["evaluate"]["epochs"] == 150
    # --seed 0 overrides a preset's seed (0 is a value, not "not given")
    assert main(["distill", "--preset", "digits", "--seed", "0", "--set", "seed=5", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 0


@pytest.mark.slow      # the whole pipeline (the module's run_dir: about 30 s)
def test_ablation_and_sweep_share_the_base(run_dir, tmp_path):
    base = str(run_dir / "base")
    sets = ["--set", "finetune.steps=3", "--set", "sample.steps=3", "--set", "evaluate.epochs=2"]
    out = tmp_path / "abl"
    assert main(["ablation", "--base", base, "--data", "digits", "--ipc", "2", "--objectives", "none,simple,minimax",
                 "--repeats", "1", "--out", str(out), "--device", "cpu", *sets]) == 0
    res = json.loads((out / "ablation.json").read_text())
    assert [v["objective"] for v in res["variants"]] == ["none", "simple", "minimax"]
    md = (out / "ablation.md").read_text()
    assert "| none (base model) |" in md and "| random real |" in md and "| minimax |" in md
    # `none` samples the base model's own weights; simple and minimax have their own fine-tuned checkpoints
    assert res["variants"][1]["finetune_steps"] == 3
    # with both lambdas zero, minimax fine-tuning is simple fine-tuning step for step: the same weights,
    # the same images
    zero = tmp_path / "zero"
    assert main(["ablation", "--base", base, "--data", "digits", "--ipc", "2", "--objectives", "simple,minimax",
                 "--repeats", "1", "--out", str(zero), "--device", "cpu", *sets, "--set", "finetune.lambda_r=0",
                 "--set", "finetune.lambda_d=0", "--set", "evaluate.epochs=1"]) == 0
    from safetensors.torch import load_file
    a, b = (load_file(next((zero / o / "finetune").glob("ckpt-*.safetensors"))) for o in ("simple", "minimax"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ((zero / "simple" / "sample" / "ipc2" / "data.pt").read_bytes()
            == (zero / "minimax" / "sample" / "ipc2" / "data.pt").read_bytes())
    sw = tmp_path / "sw"
    assert main(["sweep", "--base", base, "--data", "digits", "--ipc", "2", "--param", "lambda_r", "--values", "0,0.002",
                 "--repeats", "1", "--out", str(sw), "--device", "cpu", *sets]) == 0
    r = json.loads((sw / "sweep-lambda_r.json").read_text())
    assert [p["value"] for p in r["points"]] == [0.0, 0.002]
    assert [p["dir"] for p in r["points"]] == ["lambda_r=0.0", "default"]    # 0.002 is the paper's default
    assert (sw / "sweep-lambda_r.png").stat().st_size > 0
    # a second sweep in the same folder reuses the point at the defaults instead of fine-tuning it again
    stamp = (sw / "default" / "finetune" / "stage.json").stat().st_mtime_ns
    assert main(["sweep", "--base", base, "--data", "digits", "--ipc", "2", "--param", "memory", "--values", "64,8",
                 "--repeats", "1", "--out", str(sw), "--device", "cpu", *sets]) == 0
    r = json.loads((sw / "sweep-memory.json").read_text())
    assert [p["dir"] for p in r["points"]] == ["default", "memory=8"]
    assert (sw / "default" / "finetune" / "stage.json").stat().st_mtime_ns == stamp
    assert r["points"][0]["rows"] == json.loads((sw / "sweep-lambda_r.json").read_text())["points"][1]["rows"]
    # --seeds: the fine-tune once, sampled and evaluated at each seed (seed 0 is the point already there)
    assert main(["sweep", "--base", base, "--data", "digits", "--ipc", "2", "--param", "lambda_d", "--values", "0.008",
                 "--seeds", "0,1", "--repeats", "1", "--out", str(sw), "--device", "cpu", *sets]) == 0
    assert (sw / "default" / "finetune" / "stage.json").stat().st_mtime_ns == stamp
    assert (sw / "default" / "seed-1" / "sample" / "ipc2" / "data.pt").exists()
    assert (sw / "seed-1" / "baselines").is_dir()                 # random real at selection seed 1
    seeded = json.loads((sw / "sweep-lambda_d.json").read_text())
    row, = seeded["points"][0]["rows"]
    one = r["points"][0]["rows"][0]
    assert seeded["seeds"] == [0, 1] and row["std_over"] == "seeds" and [p["seed"] for p in row["per_seed"]] == [0, 1]
    assert row["per_seed"][0]["mean"] == one["mean"]             # seed 0 is the one-seed sweep's row
    assert row["mean"] == pytest.approx((row["per_seed"][0]["mean"] + row["per_seed"][1]["mean"]) / 2)
    assert (sw / "default" / "seed-1" / "sample" / "ipc2" / "data.pt").read_bytes() != (
        sw / "default" / "sample" / "ipc2" / "data.pt").read_bytes()
    assert "sampling seeds 0, 1" in (sw / "sweep-lambda_d.md").read_text()
    with pytest.raises(SystemExit):
        main(["sweep", "--base", base, "--data", "digits"])   # argparse: --param and --values are required
    assert main(["sweep", "--base", base, "--data", "digits", "--param", "gamma", "--values", "1", "--out",
                 str(sw)]) == 2


def test_every_shipped_preset_resolves():
    from minimaxdd.pipeline.config import build_config, load_distill_preset
    from minimaxdd.pipeline.presets import describe, list_presets

    distill = [p for p in list_presets() if describe(p)[0] == "distill"]
    assert {"digits", "fashion-mnist", "cifar10-500pc", "cifar10", "imagewoof", "imagenette", "imageidc",
            "imagenet100", "cifar100", "tinyimagenet"} <= set(distill)
    for name in distill:
        # the small-data preset is the recipe of `distill --data SPEC`: it names no dataset of its own
        cfg = build_config(load_distill_preset(name), {"data": "digits"} if name == "small-data" else {})
        assert cfg.data and cfg.ipc, name
    small = {"digits": "unet-xs", "fashion-mnist": "unet-s", "cifar10-500pc": "unet-s", "small-data": "unet-s"}
    for name, model in small.items():             # the small-data presets use the U-Net under EDM
        train = build_config(load_distill_preset(name), {"data": "digits"}).base.train
        assert (train.model, train.formulation) == (model, "edm"), name
    for name in distill:                          # every preset lets the machine choose its precision
        cfg = build_config(load_distill_preset(name), {"data": "digits"} if name == "small-data" else {})
        assert set(precisions(cfg).values()) == {"auto"}, name
    woof = build_config(load_distill_preset("imagewoof"), {})
    assert woof.ipc == [10, 20, 50, 70, 100] and woof.evaluate.protocol == "idc"
    assert woof.sample.cfg == 4.0 and woof.sample.cfg_channels == 3   # the reference's sampling
    in100 = build_config(load_distill_preset("imagenet100"), {})
    assert in100.phases == 5 and in100.ipc == [10, 20] and in100.data.startswith("imagenet100:")


def test_paper_preset_names_missing_weights_and_where_they_are_published(tmp_path, capsys):
    dit = tmp_path / "DiT-XL-2-256x256.pt"
    rc = main(["distill", "--preset", "imagewoof", "--set", f"base.pretrained={dit}", "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(dit) in err and "dl.fbaipublicfiles.com/DiT" in err
    dit.write_bytes(b"not read before the VAE is checked")
    rc = main(["distill", "--preset", "imagewoof", "--set", f"base.pretrained={dit}",
               "--set", f"base.codec=vae:{tmp_path / 'sd-vae-ft-ema'}", "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "VAE folder" in err and "sd-vae-ft-ema" in err and "huggingface.co/stabilityai" in err


@pytest.mark.slow      # the whole pipeline (the module's run_dir: about 30 s)
def test_phases_fine_tune_one_model_per_class_group(run_dir, tmp_path):
    """ImageNet-100 style: classes split into contiguous phases, one fine-tuned model each, one merged set."""
    import torch

    from minimaxdd.diffusion import checkpoints as ckpt
    from minimaxdd.pipeline.finetuning import phase_groups

    assert phase_groups(100, 5)[1] == list(range(20, 40)) and phase_groups(10, 3) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    out = tmp_path / "phased"
    args = ["2" if a == "2,3" else a for a in TINY]
    assert main(["distill", *args, "--set", f"base.pretrained={run_dir / 'base'}", "--set", "phases=3",
                 "--set", "evaluate.full_epochs=0", "--set", "evaluate.metrics=false", "--out", str(out)]) == 0
    metas = [ckpt.load(out / "finetune" / f"phase{p}")[1] for p in range(3)]
    assert [m.class_names for m in metas] == [["0", "1", "2"], ["3", "4", "5", "6"], ["7", "8", "9"]]
    assert [m.class_map for m in metas] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]   # labels keep their network class
    s = torch.load(out / "sample" / "ipc2" / "data.pt", weights_only=True)
    assert s["labels"].tolist() == [c for c in range(10) for _ in range(2)]
    # classes of different phases come from different fine-tuned models: resampling class 4 from phase 1's
    # checkpoint reproduces the merged set's images of class 4 exactly
    from minimaxdd.diffusion.generation import SampleConfig, sample_checkpoint
    settings = {k: v for k, v in json.loads((out / "sample" / "stage.json").read_text())["config"].items()
                if k != "ipc"}                        # the run's sampling settings (the small-data preset's)
    part, _ = sample_checkpoint(SampleConfig(**settings, ckpt=str(out / "finetune" / "phase1"), out=str(tmp_path / "x"),
                                             ipc=2, classes=[1], device="cpu"))
    assert torch.equal(part.images, s["images"][s["labels"] == 4])
    rows = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in rows} == {"minimax", "random"}
    # the phase count is part of the fine-tuning key: changing it reruns fine-tuning
    stage = json.loads((out / "finetune" / "stage.json").read_text())
    assert stage["config"]["phases"] == 3 and len(stage["phases"]) == 3
    assert main(["distill", *args, "--set", f"base.pretrained={run_dir / 'base'}", "--set", "phases=0",
                 "--out", str(out)]) == 2


@pytest.mark.slow      # the whole pipeline (the module's run_dir: about 30 s)
def test_evaluate_compile_reaches_the_classifiers(run_dir, tmp_path, monkeypatch):
    # `--set evaluate.compile=true` is passed to every evaluation row (compiled training itself is
    # tested in tests/evaluation/test_train_test.py; here the rows train eagerly to stay fast)
    import shutil

    import minimaxdd.evaluation.train_test as ev

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    seen, real = [], ev.evaluate_set

    def spy(*a, compile=False, **kw):
        seen.append(compile)
        return real(*a, **kw)
    monkeypatch.setattr(ev, "evaluate_set", spy)
    assert main(["distill", *TINY, "--set", "evaluate.compile=true", "--from-stage", "evaluate", "--out", str(run)]) == 0
    assert len(seen) == 5 and all(seen)      # minimax and random at IPC 2 and 3, and the full set


@pytest.mark.slow      # a copy of the module's run plus the extras stage (about 15 s)
def test_extras_rows_beside_their_controls_never_as_ours(run_dir, tmp_path, capsys):
    """`extras`: pool-and-herd with its random-keep control, real medoids with their denoised version; optional rows
    in a table of their own, left out of metrics, skipped on rerun."""
    import shutil

    from minimaxdd.data.synthetic import load_synthetic
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    extra = ["--set", "extras.pool=2", "--set", "extras.prototypes=1.0"]
    assert main(["distill", *TINY, *extra, "--out", str(run)]) == 0
    rows = json.loads((run / "results.json").read_text())
    optional = {(r["method"], r["ipc"]) for r in rows if r.get("optional")}
    names = ("minimax-pool2-herding", "minimax-pool2-random", "medoids-sigma1", "medoids")
    assert optional == {(m, k) for m in names for k in (2, 3)}
    assert {(r["method"], r["ipc"]) for r in rows if not r.get("optional")} == {
        ("minimax", 2), ("minimax", 3), ("random", 2), ("random", 3), ("full", None)}
    # generated sets (ours and the optional generated rows) are scored by the reference classifier; real ones not
    assert {r["method"] for r in rows if "generation_accuracy" in r} == {
        "minimax", "minimax-pool2-herding", "minimax-pool2-random", "medoids-sigma1"}
    pool, ours = load_synthetic(run / "extras" / "pool"), load_synthetic(run / "sample" / "ipc3")
    assert torch.bincount(pool.labels).tolist() == [6] * 10                # K x the largest IPC per class
    for c in range(10):
        mine = pool.images[pool.labels == c]
        assert torch.equal(mine[:3], ours.images[ours.labels == c])         # our set is the pool's prefix
        for name in ("minimax-pool2-herding", "minimax-pool2-random"):
            s = load_synthetic(run / "extras" / f"{name}-ipc2")
            kept = s.images[s.labels == c]
            assert len(kept) == 2 and all((mine[:4] == img).flatten(1).all(1).any() for img in kept), name
    med, den = (load_synthetic(run / "extras" / f"{n}-ipc2") for n in ("medoids", "medoids-sigma1"))
    assert torch.equal(med.labels, den.labels) and not torch.equal(med.images, den.images)
    report = (run / "report.md").read_text()
    main_part, opt_part = report.split("## Optional rows")
    assert "| minimax-pool2-herding |" in opt_part and "| medoids |" in opt_part
    assert "Generation accuracy of the minimax-pool2-herding set at IPC 2" in opt_part.split("## Images")[0]
    assert "pool2" not in main_part.split("## Images")[0] and "| minimax |" in main_part
    assert set(json.loads((run / "metrics.json").read_text())["sets"]) == {"minimax (IPC 3)", "random (IPC 3)"}
    stamp = (run / "extras" / "stage.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["distill", *TINY, *extra, "--out", str(run)]) == 0
    assert (run / "extras" / "stage.json").stat().st_mtime_ns == stamp and "extras: done" in capsys.readouterr().out
    # the extras dropped again: their rows leave the results and the report, kept aside rather than deleted
    assert main(["distill", *TINY, "--out", str(run)]) == 0
    rows = json.loads((run / "results.json").read_text())
    assert not any(r.get("optional") for r in rows) and "row(s) of an earlier config" in capsys.readouterr().out
    report = (run / "report.md").read_text()
    assert "## Optional rows" not in report and "`evaluate/stale/`" in report and "medoids-sigma1-ipc2" in report
    assert {f.name for f in (run / "evaluate" / "stale").iterdir()} == {
        f"{m}-ipc{k}-convnet3.json" for m in names for k in (2, 3)}
    assert (run / "evaluate" / "minimax-ipc2-convnet3.json").exists()


@pytest.mark.slow      # a copy of the module's run; nothing is trained (about 5 s)
def test_stage_keys_hold_the_precision_used(run_dir, tmp_path, monkeypatch, capsys):
    """Issue 27: `auto` is resolved before the stages are keyed. The run's own precision, given explicitly,
    finds every stage done (a folder made before `auto`, which said its precision, resumes); the other
    precision, or a machine where auto picks the other one, retrains the base instead of reusing it."""
    import shutil

    import minimaxdd.pipeline.base as base_stage
    import minimaxdd.pipeline.config as config
    import minimaxdd.precision as P

    base = json.loads((run_dir / "base" / "stage.json").read_text())
    used = base["config"]["precision"]
    other = {"fp32": "bf16", "bf16": "fp32"}[used]
    assert used in ("fp32", "bf16")                                         # resolved, never "auto"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["base"]["train"]["precision"] == "auto" and cfg["precision_used"]["base.train"] == used
    manifest = json.loads((run_dir / "base" / "manifest.json").read_text())
    assert manifest["precision"] == used and manifest["config"]["precision"] == used

    class Retrained(Exception):
        pass

    def no_training(*a, **k):
        raise Retrained
    monkeypatch.setattr(base_stage, "train", no_training)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["distill", *TINY, "--set", f"base.train.precision={used}", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "base: done" in out and f"precision: {used} in every stage" in out
    with pytest.raises(Retrained):
        main(["distill", *TINY, "--set", f"base.train.precision={other}", "--out", str(run)])
    # the same folder on a machine where auto resolves to the other precision
    monkeypatch.setattr(P, "resolve_precision", lambda p, device: other if p == "auto" else p)
    monkeypatch.setattr(config, "resolve_precision", P.resolve_precision)
    with pytest.raises(Retrained):
        main(["distill", *TINY, "--out", str(run)])


@pytest.mark.slow      # a copy of the module's run, its evaluation redone under rded (about 20 s)
def test_rded_soft_rows_carry_the_teacher_and_ddranking_scores(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run")
    assert main(["distill", *TINY, "--set", "evaluate.soft_labels=true", "--set", "evaluate.soft_protocol=rded",
                 "--set", "evaluate.teacher_epochs=1", "--from-stage", "evaluate", "--out", str(run)]) == 0
    rows = json.loads((run / "results.json").read_text())
    soft = [r for r in rows if r["protocol"] in ("rded", "rded-noaug")]
    assert len(soft) == 8 and all(0 <= r["teacher_test_accuracy"] <= 1 for r in soft)
    scores = json.loads((run / "ddranking.json").read_text())
    assert {(s["method"], s["ipc"]) for s in scores} == {("minimax", 2), ("minimax", 3)}
    assert all(0 <= s["lrs"] <= 100 and 0 <= s["ars"] <= 100 for s in scores)
    assert "## DD-Ranking scores" in (run / "report.md").read_text()


@pytest.mark.slow      # a copy of the module's run, its evaluation redone with periodic checks (about 10 s)
def test_report_best_rows_keep_their_final_epoch_and_stay_out_of_the_headline(run_dir, tmp_path):
    from minimaxdd.evaluation.train_test import BEST_OF_CHECKS
    run = shutil.copytree(run_dir, tmp_path / "run")
    before = {(r["method"], r["ipc"]): r for r in json.loads((run_dir / "results.json").read_text())}
    assert not any(BEST_OF_CHECKS in r for r in before.values())
    assert main(["distill", *TINY, "--set", "evaluate.report_best=true", "--out", str(run)]) == 0
    rows = json.loads((run / "results.json").read_text())
    assert len(rows) == len(before) and all(BEST_OF_CHECKS in r for r in rows)
    for r in rows:      # the same seed: the final-epoch numbers to the bit, the best check at least as high
        b, old = r[BEST_OF_CHECKS], before[(r["method"], r["ipc"])]
        assert (r["runs"], r["mean"], r["std"]) == (old["runs"], old["mean"], old["std"])
        assert b["epochs_checked"] == list(range(1, r["epochs"] + 1))   # 1-2 epochs: every epoch checked
        assert b["runs"] == [max(c) for c in b["checks"]] and b["mean"] >= r["mean"]
    # a row with checks never stands in for one without it (its key differs), nor the reverse
    key = lambda d, f: json.loads((d / "evaluate" / f.name).read_text())["key"]
    files = sorted((run / "evaluate").glob("*.json"))
    assert len(files) == len(rows) and all(key(run, f) != key(run_dir, f) for f in files)
    report = (run / "report.md").read_text()
    headline, apart = report.split("## For comparison with published tables only")
    assert BEST_OF_CHECKS not in headline and BEST_OF_CHECKS in apart
    assert BEST_OF_CHECKS not in (run_dir / "report.md").read_text()
