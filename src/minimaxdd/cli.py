"""Command line: `minimaxdd <command>` (also `python -m minimaxdd`)."""
from __future__ import annotations

import argparse
import sys

from minimaxdd import distributed as dist
from minimaxdd.errors import UserError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=None, help="image side for decoded folders (and resize of tensor sources)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0)


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    from minimaxdd.evaluation.classifiers import MODELS
    from minimaxdd.evaluation.protocols import PROTOCOLS
    from minimaxdd.runtime import PRECISIONS

    p.add_argument("--model", default="convnet3", choices=sorted(MODELS))
    p.add_argument("--protocol", default="dc", choices=sorted(PROTOCOLS))
    p.add_argument("--repeats", type=int, default=3, help="classifiers trained, each with its own seed (default 3)")
    p.add_argument("--epochs", type=int, default=None, help="override the protocol's epoch count (quick runs)")
    p.add_argument("--precision", default="bf16", choices=PRECISIONS, help="autocast for training (default bf16)")


def build_parser() -> argparse.ArgumentParser:
    from minimaxdd.baselines.registry import METHODS
    from minimaxdd.data.sources import dataset_names

    datasets = ", ".join(dataset_names())
    ap = argparse.ArgumentParser(prog="minimaxdd", description="Dataset distillation with diffusion models, and its evaluation.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("select", help="K images per class: random, herding, k-center, or DM-optimised")
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument("--real", required=True, help=f"dataset spec NAME[:ARG]; sources: {datasets}")
    p.add_argument("--ipc", type=int, required=True, help="images per class")
    p.add_argument("--out", required=True, help="output directory (synthetic-set format)")
    p.add_argument("--feature-epochs", type=int, default=None, help="epochs of the cached reference classifier")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--iterations", type=int, default=None, help="dm: iterations (default 20000, the DM paper's)")
    p.add_argument("--lr-img", type=float, default=None, help="dm: image learning rate (default 1.0)")
    p.add_argument("--batch-real", type=int, default=None, help="dm: real images per class per iteration (default 256)")
    _add_common(p)

    p = sub.add_parser("evaluate", help="train classifiers on a synthetic set, test on the real test set")
    p.add_argument("synth", nargs="?", help="synthetic-set dir, ImageFolder, .pt or .npz")
    p.add_argument("--real", required=True, help=f"dataset spec NAME[:ARG]; sources: {datasets}")
    p.add_argument("--full", action="store_true", help="train on the whole real training set instead")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--generation-accuracy", action="store_true",
                   help="also report how often a full-data classifier assigns each image to its own class")
    p.add_argument("--compile", action="store_true",
                   help="train the classifiers through torch.compile (a compile of seconds, then faster steps; BENCHMARKS.md)")
    _add_eval_args(p)
    _add_common(p)

    p = sub.add_parser("demo", help="the embedded default: `distill --preset digits` (about 5 minutes on 2 CPU cores)")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--repeats", type=int, default=None, help="classifier repeats (default 3)")
    p.add_argument("--device", default="auto")

    sub.add_parser("datasets", help="list dataset sources")

    from minimaxdd.diffusion.networks import DENOISERS
    from minimaxdd.diffusion.samplers import SAMPLERS, SPACINGS
    p = sub.add_parser("train", help="train a class-conditional diffusion model from scratch")
    p.add_argument("--preset", default=None, help="a named train preset (see `minimaxdd presets`); flags override it")
    p.add_argument("--data", default=None, help=f"dataset spec NAME[:ARG]; sources: {datasets}")
    p.add_argument("--model", default=None, choices=sorted(DENOISERS), metavar="MODEL",
                   help="dit-{n,t,s,b,l,xl}/{2,4,8} or uvit-{t,s,m} (default dit-t/2)")
    p.add_argument("--codec", default=None, help="pixel (default) or vae:DIR (a diffusers AutoencoderKL folder)")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--time-limit", type=float, default=None, help="stop (with a checkpoint) after this many minutes")
    p.add_argument("--batch", type=int, default=None, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-4, DiT's)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--ema", type=float, default=None, help="EMA decay (default 0.9999, with warm-up)")
    p.add_argument("--class-dropout", type=float, default=None, help="label dropout for guidance (default 0.1)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 1000)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"), help="autocast (default bf16)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the network (about a minute to compile; pays off over long runs)")
    p.add_argument("--out", default=None, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run")
    _add_common(p)

    p = sub.add_parser("sample", help="IPC images per class from a checkpoint (synthetic-set format)")
    p.add_argument("ckpt", help="a run directory (its latest checkpoint) or a ckpt-*.safetensors file")
    p.add_argument("--ipc", type=int, default=None, help="images per class (with --budget-minutes: the cap)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="generate class-balanced rounds until this budget ends and keep what finished "
                        "(the challenge's generative track: 10)")
    p.add_argument("--out", required=True, help="output directory (synthetic-set format)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50, the paper's)")
    p.add_argument("--sampler", default="ddpm", choices=sorted(SAMPLERS), help="default ddpm (ancestral, respaced)")
    p.add_argument("--spacing", default="time", choices=SPACINGS,
                   help="time points of the DPM-Solvers: uniform in time (default) or in log-SNR "
                        "(better for small pixel-space models)")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--cfg-channels", type=int, default=None, help="guide only the first K channels (DiT's quirk: 3)")
    p.add_argument("--batch-size", type=int, default=64, help="images per network call")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help="EMA (default) or raw weights")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="bf16: a bf16 copy of the network")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (pays off for large sets)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _add_common(p)

    from minimaxdd.training.minimax import OBJECTIVES, REDUCTIONS
    p = sub.add_parser("finetune", help="Difffit fine-tuning with the Minimax criteria (or a Table-5 ablation row)")
    p.add_argument("--ckpt", required=True, help="a run / ckpt-*.safetensors, the official DiT-XL-2-256x256.pt, "
                   "or a diffusers DiT folder")
    p.add_argument("--data", required=True, help=f"dataset spec NAME[:ARG]; sources: {datasets}")
    p.add_argument("--out", required=True, help="run directory for the fine-tuned checkpoints")
    p.add_argument("--objective", default="minimax", choices=list(OBJECTIVES))
    p.add_argument("--lambda-r", type=float, default=None, help="representativeness weight (default 0.002)")
    p.add_argument("--lambda-d", type=float, default=None, help="diversity weight (default 0.008)")
    p.add_argument("--memory", type=int, default=None, help="memory size per class (default 64)")
    p.add_argument("--reduction", default=None, choices=REDUCTIONS,
                   help="matrix: one min/max per class (reference code, default); sample: per prediction (paper)")
    p.add_argument("--trainable", default=None, choices=("difffit", "full"))
    p.add_argument("--sync-memory", action="store_true",
                   help="under torchrun: every rank enqueues every rank's batch (default: per-rank memories)")
    p.add_argument("--batch", type=int, default=None, help="default 8 (paper)")
    p.add_argument("--epochs", type=float, default=None, help="default 8 (paper)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 (paper)")
    p.add_argument("--codec", default=None, help="for pretrained weights: vae:DIR (or pixel)")
    p.add_argument("--class-map", default=None, help="network class index per dataset class, comma separated")
    p.add_argument("--synsets", default=None, help="LOC_synset_mapping.txt, to map WordNet ids to ImageNet indices")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"))
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the network (about a minute to compile; pays off over long runs)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    _add_common(p)

    p = sub.add_parser("distill", help="the main job: base model -> minimax fine-tuning -> sampling -> "
                                        "evaluation against baselines -> report")
    p.add_argument("--preset", default=None, help="a distill preset (see `minimaxdd presets`) or a preset .json path")
    p.add_argument("--data", default=None, help=f"dataset spec (overrides the preset's); sources: {datasets}")
    p.add_argument("--ipc", default=None, help="images per class, comma separated (e.g. 10,50)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config entry, e.g. --set finetune.steps=200 --set evaluate.repeats=1 "
                        "(values are read as JSON when they parse)")
    p.add_argument("--out", default=None, help="run directory (default runs/<preset>)")
    p.add_argument("--from-stage", default=None, help="rerun this stage and all after it: base, finetune, sample, "
                   "baselines, evaluate, report")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_common(p)

    p = sub.add_parser("metrics", help="MMD, FID, precision / recall, density / coverage, representativeness and "
                                        "diversity of synthetic sets against the real training set")
    p.add_argument("synth", nargs="+", help="one or more synthetic sets (dir, ImageFolder, .pt, .npz)")
    p.add_argument("--real", required=True, help=f"dataset spec NAME[:ARG]; sources: {datasets}")
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    p.add_argument("--features", default="reference",
                   help="reference (the harness's full-data ConvNet-3, default) or torchscript:PATH (e.g. Inception)")
    p.add_argument("--tsne", default=None, help="also write a t-SNE plot (PNG) here")
    _add_common(p)

    p = sub.add_parser("ablation", help="Table 5: fine-tune, sample and evaluate each objective from one base model")
    p.add_argument("--base", required=True, help="base checkpoint: a run, ckpt-*.safetensors, or official weights")
    p.add_argument("--data", required=True, help=f"dataset spec NAME[:ARG]; sources: {datasets}")
    p.add_argument("--ipc", default="10,50", help="images per class, comma separated (default 10,50)")
    p.add_argument("--objectives", default="none,simple,rep,div,rep-mean,div-mean,minimax",
                   help="comma separated; none = the base model unchanged (the paper's DiT column)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the distill config, e.g. --set finetune.steps=500 --set evaluate.epochs=300")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("sweep", help="Fig. 6: accuracy against one fine-tuning knob (lambda_r, lambda_d, memory, ...)")
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--param", required=True, help="lambda_r, lambda_d, memory, epochs or steps")
    p.add_argument("--values", required=True, help="comma separated values")
    p.add_argument("--objective", default="minimax")
    p.add_argument("--ipc", default="10")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("report", help="(re)write RUN/report.md from a distill run")
    p.add_argument("run", help="a distill run directory")

    sub.add_parser("presets", help="list the named presets")
    return ap


def cmd_select(a) -> int:
    from minimaxdd.baselines.registry import SelectConfig, run

    s = run(SelectConfig(method=a.method, real=a.real, ipc=a.ipc, out=a.out, seed=a.seed, size=a.size,
                         device=a.device, feature_epochs=a.feature_epochs, overwrite=a.overwrite,
                         iterations=a.iterations, lr_img=a.lr_img, batch_real=a.batch_real))
    print(f"wrote {len(s.labels)} images ({a.ipc} per class, {a.method}) to {a.out}")
    return 0


def cmd_evaluate(a) -> int:
    from minimaxdd.evaluation.train_test import EvaluateConfig, format_table, run

    r = run(EvaluateConfig(synth=a.synth, real=a.real, model=a.model, protocol=a.protocol, repeats=a.repeats,
                           epochs=a.epochs, seed=a.seed, full=a.full, size=a.size, device=a.device,
                           precision=a.precision, out=a.out, generation_accuracy=a.generation_accuracy,
                           compile=a.compile))
    if not dist.is_main():
        return 0
    print(format_table([r]))
    if "generation" in r:
        g = r["generation"]
        print(f"generation accuracy {100 * g['generation_accuracy']:.2f}% (reference classifier: "
              f"{100 * g['reference_test_accuracy']:.2f}% on the real test set)")
    print("per-class accuracy (%): " + ", ".join(f"{n} {100 * v:.1f}" for n, v in zip(r["class_names"], r["per_class"])))
    if a.out:
        print(f"wrote {a.out}")
    return 0


def cmd_demo(a) -> int:
    from minimaxdd.pipeline.demo import run

    run(out=a.out, repeats=a.repeats, device=a.device)
    return 0


def cmd_datasets(a) -> int:
    from minimaxdd.data.sources import DATASETS

    for name, fn in DATASETS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        print(f"{name:<16}{doc[0] if doc else ''}")
    return 0


def cmd_train(a) -> int:
    from minimaxdd.pipeline.presets import load_preset
    from minimaxdd.training.loop import TrainConfig
    from minimaxdd.training.scratch import run

    fields = ("data", "model", "codec", "epochs", "steps", "batch", "lr", "weight_decay", "ema", "class_dropout",
              "checkpoint_every", "precision", "compile", "out", "size")
    kw = dict(load_preset(a.preset, "train")) if a.preset else {}
    kw.update({f: getattr(a, f) for f in fields if getattr(a, f) is not None})
    if a.time_limit is not None:
        kw["time_limit"] = a.time_limit * 60
    if a.epochs is not None or a.steps is not None:   # a flag for one length replaces the preset's other
        kw["epochs"], kw["steps"] = a.epochs, a.steps
    for need in ("data", "out"):
        if not kw.get(need):
            raise UserError(f"train needs --{need} (or a --preset that sets it)")
    info = run(TrainConfig(**kw, seed=a.seed, device=a.device, resume=a.resume, overwrite=a.overwrite, preset=a.preset))
    if dist.is_main():
        print(f"trained {info['steps']} steps ({info['images_per_s']} images/s); checkpoint {info['checkpoint']}"
          + (f" (stopped early: {info['stopped']})" if info["stopped"] else ""))
    return 0


def cmd_sample(a) -> int:
    from minimaxdd.diffusion.generation import SampleConfig, run

    if a.ipc is None and a.budget_minutes is None:
        raise UserError("sample needs --ipc K, or --budget-minutes M (optionally with --ipc as a cap)")
    ipc = a.ipc if a.ipc is not None else 10**6
    path, info = run(SampleConfig(ckpt=a.ckpt, out=a.out, ipc=ipc, budget_minutes=a.budget_minutes, steps=a.steps, sampler=a.sampler,
                                  spacing=a.spacing, cfg=a.cfg,
                                  cfg_channels=a.cfg_channels, seed=a.seed, batch_size=a.batch_size,
                                  weights=a.weights, precision=a.precision, device=a.device, overwrite=a.overwrite,
                                  compile=a.compile))
    if not dist.is_main():
        return 0
    b = info.get("budget")
    extra = f"; budget {b['minutes']} min: {b['per_class']} per class, stopped by {b['stopped']}" if b else ""
    print(f"wrote {path}: {info['num_images']} images ({info['images_per_s']} images/s sampling{extra})")
    return 0


def cmd_finetune(a) -> int:
    from minimaxdd.training.finetune import FinetuneConfig, run

    kw = {f: getattr(a, f) for f in ("lambda_r", "lambda_d", "memory", "reduction", "trainable", "batch", "lr",
                                      "codec", "synsets", "checkpoint_every", "precision", "compile", "size")
          if getattr(a, f) is not None}
    if a.epochs is not None or a.steps is not None:
        kw["epochs"], kw["steps"] = a.epochs, a.steps
    if a.class_map:
        try:
            kw["class_map"] = [int(v) for v in a.class_map.split(",")]
        except ValueError as e:
            raise UserError(f"--class-map must be comma-separated integers, got {a.class_map!r}") from e
    info = run(FinetuneConfig(ckpt=a.ckpt, data=a.data, out=a.out, objective=a.objective, seed=a.seed,
                              device=a.device, resume=a.resume, overwrite=a.overwrite, sync_memory=a.sync_memory,
                              **kw))
    if dist.is_main():
        print(f"fine-tuned {info['steps']} steps ({info['images_per_s']} images/s); checkpoint {info['checkpoint']}")
    return 0


def cmd_presets(a) -> int:
    import textwrap

    from minimaxdd.pipeline.presets import describe, list_presets

    for name in list_presets():
        stage, text = describe(name)
        print(f"{name}  [{stage}]")
        print(textwrap.indent(textwrap.fill(text, 96), "    "))
    return 0


def cmd_distill(a) -> int:
    import json

    from minimaxdd.pipeline.distill import (
        build_config,
        load_distill_preset,
        parse_set,
        run,
    )

    preset = load_distill_preset(a.preset) if a.preset else None
    over = parse_set(a.set)
    for k in ("data", "ipc", "size", "device"):
        if getattr(a, k) is not None:
            over[k] = getattr(a, k)
    if a.seed:
        over["seed"] = a.seed
    cfg = build_config(preset, over)
    if a.print_config:
        print(json.dumps(cfg, indent=2))
        return 0
    out = a.out or f"runs/{a.preset.removesuffix('.json').split('/')[-1] if a.preset else 'distill'}"
    rows = run(cfg, out, a.from_stage)
    from minimaxdd.evaluation.train_test import format_table
    print(format_table(rows))
    print(f"wrote {out}/results.json and {out}/report.md")
    return 0


def cmd_metrics(a) -> int:
    from minimaxdd.evaluation.metrics import format_metrics, run

    m = run(a.synth, a.real, a.out, a.features, a.size, a.device, a.seed, a.tsne)
    print(format_metrics(m))
    if a.out:
        print(f"wrote {a.out}")
    return 0


def cmd_ablation(a) -> int:
    from minimaxdd.pipeline.ablation import ablation_markdown, run_ablation
    from minimaxdd.pipeline.distill import parse_set

    res = run_ablation(a.base, a.data, a.ipc, [o.strip() for o in a.objectives.split(",") if o.strip()], a.out,
                       a.repeats, parse_set(a.set), a.device)
    print(ablation_markdown(res))
    print(f"wrote {a.out}/ablation.md and {a.out}/ablation.json")
    return 0


def cmd_sweep(a) -> int:
    from minimaxdd.pipeline.ablation import run_sweep
    from minimaxdd.pipeline.distill import parse_set

    res = run_sweep(a.base, a.data, a.ipc, a.param, a.values.split(","), a.out, a.objective, a.repeats,
                    parse_set(a.set), a.device)
    for p in res["points"]:
        print(f"{a.param}={p['value']}: " + ", ".join(f"IPC {r['ipc']} {100 * r['mean']:.2f} +- {100 * r['std']:.2f}"
                                                      for r in p["rows"]))
    print(f"wrote {res['plot']}")
    return 0


def cmd_report(a) -> int:
    from minimaxdd.pipeline.report import write_report

    print(f"wrote {write_report(a.run)}")
    return 0


COMMANDS = {"select": cmd_select, "evaluate": cmd_evaluate, "demo": cmd_demo, "datasets": cmd_datasets,
            "train": cmd_train, "sample": cmd_sample, "finetune": cmd_finetune, "presets": cmd_presets,
            "distill": cmd_distill, "report": cmd_report, "metrics": cmd_metrics,
            "ablation": cmd_ablation, "sweep": cmd_sweep}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ok = False
    try:
        rc = COMMANDS[args.command](args)
        ok = True
        return rc
    except UserError as e:
        print(f"minimaxdd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    finally:
        dist.shutdown(sync=ok)
