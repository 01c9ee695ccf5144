"""`minimaxdd sample`: IPC images per class from a checkpoint, written in the synthetic-set format."""
from __future__ import annotations

import dataclasses
import functools
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from minimaxdd import distributed as dist
from minimaxdd.data.dataset import Dataset, validation_split
from minimaxdd.data.sources import load_dataset
from minimaxdd.data.synthetic import SyntheticSet, write_synthetic
from minimaxdd.diffusion import checkpoints as ckpt
from minimaxdd.diffusion.codecs import Codec, PixelCodec, build_codec, encode_dataset
from minimaxdd.diffusion.guides import (
    DEVIATION_MEMORY,
    IGD_SIGMA_HI,
    IGD_SIGMA_LO,
    MGD3_SIGMA_STOP,
    Guides,
    class_modes,
)
from minimaxdd.diffusion.sampling import (
    DEFAULT_SAMPLER,
    GRIDS,
    SAMPLERS,
    check_sampler,
    default_steps,
    denoise_from,
    generate,
    image_seed,
    sampling_network,
)
from minimaxdd.errors import UserError
from minimaxdd.files import check_set_out, input_paths, manifest, reading, run_lock
from minimaxdd.precision import describe_precision, precision_line, resolve_precision
from minimaxdd.runtime import PRECISIONS, pick_device
from minimaxdd.settings import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Bounds,
    run_field,
    setting,
    without_values,
)

SAMPLER_CHOICES = tuple(SAMPLERS)   # the CLI choices; each names one algorithm for every formulation
# Guidance scales in use are 1-10 (DiT: 1.5 and 4; U-ViT: 0.4-3 as w + 1); far above, the guided prediction is
# the class difference times a huge number, and a float32 overflows from about 3e38: refused above 100.
GUIDANCE_SCALES = Bounds(0, 100)
# The most memory a sampled set may take while it is made (the sampler's float32 output and the uint8
# images, both whole; ours: a quarter of a 64 GiB machine). ImageNet-1k at IPC 50, 256 px through the VAE:
# about 11 GiB.
MAX_SET_BYTES = 16 << 30
# Where mode guidance clusters the real images (`SampleConfig.mode_space`).
MODE_SPACES = ("model", "features")
# What each mode is (`SampleConfig.mode_target`): its cluster's centre (MGD3's) or the member image nearest it.
MODE_TARGETS = ("centre", "medoid")


def modes_name(space: str, target: str) -> str:
    """The row and file name of mode guidance with these settings: modes, feature-modes, medoid-modes,
    feature-medoid-modes."""
    return ("feature-" if space == "features" else "") + ("medoid-" if target == "medoid" else "") + "modes"


# embed(dataset, device) -> unit rows (N, D) of a feature space for its training images: the reference classifier's
# (`evaluation.reference_classifier.reference_features`), handed down by the layers that may import it.
Embed = Callable[[Dataset, torch.device], torch.Tensor]


@dataclass(kw_only=True)
class SampleConfig:
    ckpt: str = run_field(help="a run directory (its latest checkpoint) or a ckpt-*.safetensors file")
    out: str = run_field(help="output directory (synthetic-set format)")
    ipc: int = run_field(10, help="images per class (with --budget-minutes: the cap)")
    seed: int = run_field(0)
    device: str = run_field("auto")
    classes: list[int] | None = run_field(None, help="dataset labels to sample (default all)")
    overwrite: bool = run_field(False, help="replace --out if it exists")
    sampler: str | None = setting(None, choices=SAMPLER_CHOICES,
                                  help="null: the checkpoint's formulation's default (ddpm: ancestral ddpm, the "
                                       "paper's; edm: heun); euler, heun, dpm-solver, sde-dpm-solver for any model; "
                                       "ddpm and ddim for ddpm models")
    steps: int | None = setting(None, bounds=AT_LEAST_1,
                                help="sampling steps; null: the sampler's default (ddpm models: 50, the "
                                           "paper's; edm models: heun 18, EDM's; euler 35; dpm-solvers 20)")
    spacing: str = setting("time", choices=GRIDS,
                           help="noise levels: time (each formulation's own steps: DDPM's training steps "
                                "uniform in time, EDM's Eq. 5), logsnr (DDPM steps uniform in log-SNR, better "
                                "for small pixel-space models), karras (EDM's Eq. 5 on any model)")
    cfg: float | None = setting(None, bounds=GUIDANCE_SCALES,
                                help="classifier-free guidance scale, 1 = none; null: the checkpoint's "
                                           "default (4.0 for models fine-tuned from the official DiT, as the "
                                           "reference samples), else 1")
    cfg_channels: int | None = setting(None, bounds=AT_LEAST_1,
                                       help="guide only the first K channels (DiT's quirk: 3); null: the "
                                                  "checkpoint's default, else all")
    batch_size: int = setting(64, bounds=AT_LEAST_1, help="images per network call")
    weights: str = setting("ema", choices=("ema", "model"), help="EMA or raw weights")
    precision: str = setting("auto", choices=PRECISIONS, help="bf16: a bf16 copy of the network; auto: bf16 where "
                                                              "this machine runs it fast, else fp32")
    compile: bool = setting(False, help="torch.compile the network (pays off for large sets)")
    budget_minutes: float | None = setting(None, bounds=POSITIVE,
                                           help="generate class-balanced rounds until this budget ends and "
                                                      "keep what finished (the challenge's generative track: 10)")
    # The guides of minimaxdd.diffusion.guides; each off at its default (the same bytes as before they existed).
    cfg_sigma_lo: float = setting(0.0, bounds=NON_NEGATIVE,
                                  help="classifier-free guidance only above this noise level sigma (Kynkaanniemi "
                                       "et al. 2024; EDM2-S: 0.28), the conditional model alone below; 0: from the "
                                       "lowest level")
    cfg_sigma_hi: float | None = setting(None, bounds=POSITIVE,
                                         help="and only up to this sigma (EDM2-S: 5.42); null: no upper end")
    mode_guidance: float = setting(0.0, bounds=PROBABILITY,
                                   help="mode guidance (MGD3): D <- D + lambda (m - D), m the k-means mode (k = IPC) "
                                        "of the class's real training images in the model's space (pixels or the "
                                        "codec's latents) assigned to the image; lambda this; 0: off")
    mode_stop: float = setting(MGD3_SIGMA_STOP, bounds=NON_NEGATIVE,
                               help="mode guidance acts while sigma is above this (MGD3's stop guidance: step 25 of "
                                    "DiT's 50, sigma 3.44)")
    mode_space: str = setting("model", choices=MODE_SPACES,
                              help="where mode guidance finds its k-means clusters: model (the model's space, "
                                   "MGD3's), features (the reference classifier's embedding, the space herding "
                                   "selects in; each mode is then its cluster's mean in the model's space)")
    mode_target: str = setting("centre", choices=MODE_TARGETS,
                               help="what each mode is: centre (its cluster's k-means centre, MGD3's; with "
                                    "mode_space features, the mean of its members) or medoid (the real training "
                                    "image of the cluster nearest that centre, in the space it was clustered in)")
    deviation: float = setting(0.0, bounds=NON_NEGATIVE,
                               help="IGD's deviation term: each image's D turned away from the most cosine-similar "
                                    "earlier sample of its class (about this many radians times the sine of the "
                                    "angle); images are then generated in rounds, one per class each; 0: off")
    deviation_sigma_lo: float = setting(IGD_SIGMA_LO, bounds=NON_NEGATIVE,
                                        help="the deviation term acts for sigma above this (IGD: steps 30-45 of 50, "
                                             "sigma 6.66 to 71.1)")
    deviation_sigma_hi: float | None = setting(IGD_SIGMA_HI, bounds=POSITIVE,
                                               help="and up to this; null: no upper end")
    data: str | None = run_field(None, help="the dataset whose training images give mode guidance its modes")
    size: int | None = run_field(None, help="its image side (default: the checkpoint's)")
    holdout: list[float] | None = run_field(None, help="[fraction, seed]: leave the validation split "
                                                       "(data.dataset.validation_split) out of the modes (`choose`)")


# The guide settings and their defaults: at these a set is sampled as before the guides existed, and they stay out
# of the stage keys (`guide_settings`) so that earlier runs' keys hold.
GUIDE_DEFAULTS = {"cfg_sigma_lo": 0.0, "cfg_sigma_hi": None, "mode_guidance": 0.0, "mode_stop": MGD3_SIGMA_STOP,
                  "mode_space": "model", "mode_target": "centre", "deviation": 0.0, "deviation_sigma_lo": IGD_SIGMA_LO,
                  "deviation_sigma_hi": IGD_SIGMA_HI}


def without_default_guides(settings: dict) -> dict:
    """Sampling settings (a dict) less the guide settings left at their defaults: what a stage key should see."""
    return without_values(settings, GUIDE_DEFAULTS)


def guides_on(cfg: Any) -> dict[str, bool]:
    """Which guides a sampling config (SampleConfig or the distill config's sample section) turns on."""
    return {"interval": cfg.cfg_sigma_lo > 0 or cfg.cfg_sigma_hi is not None, "modes": cfg.mode_guidance > 0,
            "deviation": cfg.deviation > 0}


NO_GUIDANCE = 1.0          # a guidance scale of 1 is the conditional model alone
# The settings a checkpoint may carry defaults for (`CheckpointMeta.defaults["sample"]`), with their names in words.
CHECKPOINT_SETTINGS = {"cfg": "guidance", "cfg_channels": "guided channels", "sampler": "sampler", "steps": "steps"}


def with_checkpoint_defaults(cfg: SampleConfig, defaults: dict) -> tuple[SampleConfig, dict[str, str]]:
    """`cfg` with each of CHECKPOINT_SETTINGS it leaves null taken from the checkpoint's sampling defaults, and
    where every value came from: "given" (a flag or the config), "checkpoint", or "default" (the package's)."""
    ckpt_values = defaults.get("sample", {})
    values, sources = {}, {}
    for name in CHECKPOINT_SETTINGS:
        if getattr(cfg, name) is not None:
            sources[name] = "given"
        elif ckpt_values.get(name) is not None:
            values[name], sources[name] = ckpt_values[name], "checkpoint"
        else:
            sources[name] = "default"
    cfg = dataclasses.replace(cfg, **values)
    if cfg.cfg is None:
        cfg = dataclasses.replace(cfg, cfg=NO_GUIDANCE)
    return cfg, sources


def effective_settings(cfg: SampleConfig, sources: dict[str, str], formulation: str) -> dict[str, dict]:
    """{name: {"value", "from"}} of each of CHECKPOINT_SETTINGS as sampling will use it."""
    sampler, steps = resolve_sampler(cfg, formulation)
    values = {"cfg": cfg.cfg, "cfg_channels": cfg.cfg_channels, "sampler": sampler, "steps": steps}
    return {name: {"value": values[name], "from": sources[name]} for name in CHECKPOINT_SETTINGS}


def describe_settings(settings: dict[str, dict]) -> str:
    """One line: each effective sampling setting and where it came from (`effective_settings`)."""
    def shown(name: str) -> object:
        v = settings[name]["value"]
        return "all" if name == "cfg_channels" and v is None else v
    return ", ".join(f"{words} {shown(name)} ({settings[name]['from']})" for name, words in CHECKPOINT_SETTINGS.items())


def resolve_sampler(cfg: SampleConfig, formulation: str) -> tuple[str, int]:
    """The sampler and step count a config means for a model of `formulation`, checked (UserError names the fix)."""
    sampler = cfg.sampler or DEFAULT_SAMPLER[formulation]
    try:
        check_sampler(sampler, formulation, cfg.spacing)
    except ValueError as e:
        raise UserError(f"{e} (or leave --sampler and --spacing out for {formulation}'s defaults)") from None
    steps = cfg.steps if cfg.steps is not None else default_steps(sampler, formulation)
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if cfg.cfg_channels is not None and formulation != "ddpm":
        raise UserError("--cfg-channels (DiT's guidance quirk) applies to ddpm models only; drop it")
    return sampler, steps


def check_sample_config(cfg: SampleConfig) -> None:
    """Every check of a sampling config that needs no checkpoint, before any work (UserError names the fix)."""
    if cfg.ipc < 1:
        raise UserError(f"--ipc must be at least 1, got {cfg.ipc}")
    if cfg.sampler is not None and cfg.sampler not in SAMPLER_CHOICES:
        raise UserError(f"unknown sampler {cfg.sampler!r}; choose one of {', '.join(SAMPLER_CHOICES)}")
    if cfg.spacing not in GRIDS:
        raise UserError(f"unknown spacing {cfg.spacing!r}; choose one of {', '.join(GRIDS)}")
    if cfg.budget_minutes is not None and cfg.budget_minutes <= 0:
        raise UserError(f"--budget-minutes must be positive, got {cfg.budget_minutes}")
    check_guides(cfg)


def check_guides(cfg: SampleConfig) -> None:
    """The guide settings' checks across keys (each value's bounds were checked when the config was built)."""
    for name, lo, hi in (("cfg_sigma", cfg.cfg_sigma_lo, cfg.cfg_sigma_hi),
                         ("deviation_sigma", cfg.deviation_sigma_lo, cfg.deviation_sigma_hi)):
        if lo < 0 or (hi is not None and not hi > lo):
            raise UserError(f"{name}_lo {lo:g} and {name}_hi {hi}: the interval (lo, hi] needs 0 <= lo < hi "
                            f"(e.g. lo 0.28, hi 5.42), or hi null for no upper end")
    if not 0 <= cfg.mode_guidance <= 1:
        raise UserError(f"mode_guidance is the share of the way D moves to its mode per step, in [0, 1]; got "
                        f"{cfg.mode_guidance:g} (0.05-0.2 are sensible; 0: off)")
    if cfg.deviation < 0 or cfg.mode_stop < 0:
        raise UserError(f"deviation ({cfg.deviation:g}) and mode_stop ({cfg.mode_stop:g}) must be >= 0")
    on = guides_on(cfg)
    if (on["modes"] or on["deviation"]) and cfg.budget_minutes is not None:
        raise UserError("mode guidance and the deviation term need the whole IPC (k = IPC modes; the deviation "
                        "term's rounds): drop --budget-minutes, or set mode_guidance and deviation to 0")
    if on["modes"] and not cfg.data:
        raise UserError("mode guidance takes its modes from the real training images: give the dataset (--data SPEC, "
                        "the one the checkpoint was trained on), or set mode_guidance to 0")


def _generator(cfg: SampleConfig, formulation: str, clip: bool, device: torch.device,
               sources: dict[str, str]) -> tuple[Callable, str]:
    """generate(model, labels, seeds, desc=..., **overrides) for the model's formulation, and a description;
    prints the effective settings and their sources."""
    sampler, steps = resolve_sampler(cfg, formulation)
    if dist.is_main():
        print(f"[sample] {describe_settings(effective_settings(cfg, sources, formulation))}", file=sys.stderr,
              flush=True)
    gen = functools.partial(generate, formulation=formulation, sampler=sampler, steps=steps, spacing=cfg.spacing,
                            cfg_scale=cfg.cfg, cfg_channels=cfg.cfg_channels, clip=clip, precision=cfg.precision,
                            batch_size=cfg.batch_size, device=device, compile=cfg.compile)
    return gen, f"{sampler} {steps} steps" + ("" if formulation == "ddpm" else f" ({formulation})")


def sample_checkpoint(cfg: SampleConfig, embed: Embed | None = None) -> tuple[SyntheticSet, dict]:
    """IPC images per class (or a time budget's worth) from a checkpoint, with timing and provenance. `embed`: the
    feature space of mode guidance's clusters when cfg.mode_space is "features" (`Embed`)."""
    check_sample_config(cfg)
    if cfg.mode_guidance > 0 and cfg.mode_space == "features" and embed is None:
        raise UserError("mode_space features clusters in the reference classifier's features: sample through "
                        "`minimaxdd sample` or `distill`, or pass embed=reference_features to sample_checkpoint; "
                        "or set mode_space to model")
    device = dist.setup(pick_device(cfg.device))
    file = ckpt.resolve(cfg.ckpt)
    fix = ("re-download it, or re-run the training that wrote it (a run's older checkpoint also serves: name it "
           "as the checkpoint to sample)")
    with reading(file, fix):
        meta = ckpt.read_meta(file)
    cfg, sources = with_checkpoint_defaults(cfg, meta.defaults)
    resolve_sampler(cfg, meta.formulation)             # the checks that need the formulation come first
    requested = cfg.precision
    cfg = dataclasses.replace(cfg, precision=resolve_precision(requested, device))
    if dist.is_main():
        print(f"[sample] {precision_line(requested, cfg.precision, device)}", file=sys.stderr, flush=True)
    channels = meta.model.get("in_channels")
    if cfg.cfg_channels is not None and channels is not None and not 1 <= cfg.cfg_channels <= channels:
        raise UserError(f"--cfg-channels {cfg.cfg_channels}: the model has {channels} latent channels; give 1 to "
                        f"{channels}, or leave it out to guide all")
    labels = list(range(len(meta.class_names))) if cfg.classes is None else cfg.classes
    bad = [c for c in labels if not 0 <= c < len(meta.class_names)]
    if bad:
        raise UserError(f"--classes {bad} out of range: the checkpoint has {len(meta.class_names)} classes")
    if cfg.budget_minutes is None:       # a budget's rounds stop by time; a fixed count must fit in memory
        check_set_size(cfg.ipc, len(labels), meta)
    gen, what = _generator(cfg, meta.formulation, meta.codec == "pixel", device, sources)
    with reading(file, fix):
        model, meta = ckpt.load(file, cfg.weights, device)
    check_finite_weights(model, file, cfg.weights)
    codec = build_codec(meta.codec, meta.channels, meta.image_size, device)
    t0 = time.time()
    budget = None
    if cfg.budget_minutes is None:
        ds_labels = torch.tensor([c for c in labels for _ in range(cfg.ipc)])
        net_labels = torch.as_tensor(meta.class_map)[ds_labels]
        # Seeds are keyed by the network class, so the same class gets the same noise in any subset.
        seeds = [image_seed(cfg.seed, c, i % cfg.ipc) for i, c in enumerate(net_labels.tolist())]
        if any(guides_on(cfg).values()):
            x = _guided(model, codec, labels, meta, cfg, gen, what, embed, device)
        else:
            x = gen(model, net_labels, seeds, desc=f"sample {what}")
        images = codec.decode(finite_samples(x, cfg, file))
    else:
        images, ds_labels, budget = _budgeted(model, codec, labels, meta.class_map, cfg, gen, device)
    t_sample = time.time() - t0
    s = SyntheticSet(images, ds_labels, list(meta.class_names))
    info = {"sample_time_s": round(t_sample, 3), "images_per_s": round(len(images) / max(t_sample, 1e-9), 3),
            "checkpoint": str(ckpt.resolve(cfg.ckpt)), "checkpoint_step": meta.step, "class_map": meta.class_map,
            "num_images": len(images), "sampler": what,
            "settings": effective_settings(cfg, sources, meta.formulation),
            **describe_precision(requested, cfg.precision, device)}
    if budget is not None:
        info["budget"] = budget
    return s, info


def from_real_images(cfg: SampleConfig, images: torch.Tensor, labels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Real images uint8 (N, C, H, W) of dataset classes `labels` (N,), noised to `sigma` and denoised by the
    checkpoint's EDM model with cfg's sampler, steps and guidance (`sampling.denoise_from`); each image keeps its class
    and gets its own noise stream (cfg.seed, class, index); a VAE codec starts from the posterior mean (no draw
    from the global RNG: the same seed gives the same images). Returns uint8 images like the input."""
    check_sample_config(cfg)
    device = pick_device(cfg.device)
    file = ckpt.resolve(cfg.ckpt)
    fix = "re-download it, or re-run the training that wrote it"
    with reading(file, fix):
        meta = ckpt.read_meta(file)
    if meta.formulation != "edm":
        raise UserError(f"starting from real images needs a model of the edm formulation; {file} is {meta.formulation} "
                        "(train the base with --set base.train.formulation=edm, or drop the prototypes row)")
    cfg, _ = with_checkpoint_defaults(cfg, meta.defaults)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
    sampler, steps = resolve_sampler(cfg, meta.formulation)
    with reading(file, fix):
        model, meta = ckpt.load(file, cfg.weights, device)
    check_finite_weights(model, file, cfg.weights)
    codec = build_codec(meta.codec, meta.channels, meta.image_size, device)
    net_labels = torch.as_tensor(meta.class_map)[labels]                          # (N,) the network's classes
    seeds, seen = [], {}
    for c in net_labels.tolist():
        seeds.append(image_seed(cfg.seed, c, seen.setdefault(c, 0)))
        seen[c] += 1
    start = (codec.moments(images)[0] if getattr(codec, "stochastic", False) else codec.encode(images)).to(device)
    x = denoise_from(sampling_network(model, cfg.precision), start, net_labels, sigma, seeds,
                     formulation=meta.formulation, sampler=sampler, steps=steps,
                     cfg_scale=cfg.cfg if cfg.cfg is not None else 1.0, precision=cfg.precision,
                     batch_size=cfg.batch_size, device=device)
    x = finite_samples(x, cfg, file)
    return codec.decode(x.clamp(-1, 1) if meta.codec == "pixel" else x)


def check_set_size(ipc: int, classes: int, meta: ckpt.CheckpointMeta) -> None:
    """Refuse a set too large for memory before anything is built: the whole set is held at once, as the
    sampler's float32 output (latent shape) and as uint8 images (MAX_SET_BYTES)."""
    latent = meta.model.get("in_channels", meta.channels) * meta.model.get("input_size", meta.image_size) ** 2
    per_image = 4 * latent + meta.channels * meta.image_size ** 2                       # bytes
    n = ipc * classes
    if n * per_image > MAX_SET_BYTES:
        most = max(1, MAX_SET_BYTES // (per_image * classes))
        raise UserError(f"--ipc {ipc} asks for {n:,} images ({ipc:,} for each of {classes} classes), about "
                        f"{n * per_image / 2**30:,.0f} GiB held in memory at once; this tool samples at most "
                        f"{MAX_SET_BYTES // 2**30} GiB per set: lower --ipc (at most {most:,} for this checkpoint), "
                        "or give --budget-minutes")


def check_finite_weights(model: nn.Module, file: Path, weights: str) -> None:
    """Refuse a network whose weights hold NaN or inf (a diverged run's checkpoint): it samples garbage."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UserError(f"the {weights} weights in {file} hold non-finite values (NaN or inf) in {len(bad)} tensors "
                        f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): the training that wrote it "
                        "diverged. Sample an earlier checkpoint of the run, or retrain with a lower --lr or "
                        "--grad-clip 1.0")


def finite_samples(x: torch.Tensor, cfg: SampleConfig, file: str | Path) -> torch.Tensor:
    """`x`, the sampler's float output, if every value is finite; else a UserError naming the likely cause
    (the weights were checked on loading, so the guidance scale or the sampler), before anything is decoded."""
    if torch.isfinite(x).all():
        return x
    share = 1 - torch.isfinite(x).float().mean().item()
    cause = (f"the guidance scale --cfg {cfg.cfg:g} amplifies the class difference past float range: lower it "
             "(1-10 is usual)" if cfg.cfg not in (None, NO_GUIDANCE) else
             "the sampler diverged: try more --steps, another --sampler, or --precision fp32")
    raise UserError(f"sampling {file} gave non-finite values ({100 * share:.1f}% NaN or inf), which would be "
                    f"written as black images; nothing was written. Likely cause: {cause}")


def real_modes(cfg: SampleConfig, meta: ckpt.CheckpointMeta, codec: Codec, labels: list[int],
               embed: Embed | None = None, device: torch.device | None = None) -> dict[int, torch.Tensor]:
    """{checkpoint class: its cfg.ipc modes (ipc, C, H, W) in the model's space}: k-means of the class's real training
    images of cfg.data, as pixels in [-1, 1] for pixel models, as the codec's (cached) posterior-mean latents for
    latent ones (`guides.class_modes`, seeded from cfg.seed); with cfg.mode_space "features", clustered in
    `embed`'s features of the images instead, each mode its cluster's mean in the model's space; with
    cfg.mode_target "medoid", each mode the cluster's member nearest its centre."""
    ds = load_dataset(cfg.data, size=cfg.size or meta.image_size)
    missing = [n for n in meta.class_names if n not in ds.class_names]
    if missing:
        raise UserError(f"mode guidance: the checkpoint's classes {missing[:3]} are not in {cfg.data}; give the "
                        "dataset the checkpoint was trained on (--data)")
    local = torch.full_like(ds.y_train, -1)                     # (N,) each training image's checkpoint class, or -1
    for c in labels:
        local[ds.y_train == list(ds.class_names).index(meta.class_names[c])] = c
    if cfg.holdout is not None:                                 # `choose` scores on these: they give no mode
        local[validation_split(ds, cfg.holdout[0], int(cfg.holdout[1]))[1]] = -1
    feats = None
    if cfg.mode_space == "features":
        if embed is None:
            raise UserError("mode_space features needs the reference classifier's features (embed); or set "
                            "mode_space to model")
        feats = embed(ds, device or torch.device("cpu")).cpu()                       # (N, D), every training image
    keep = (local >= 0).nonzero().squeeze(1)
    if isinstance(codec, PixelCodec):
        x = codec.encode(ds.x_train[keep])                      # (n, C, H, W) in [-1, 1]
    else:
        x = encode_dataset(codec, ds.x_train, ds.fingerprint())["mean"][keep, 0].float()   # unmirrored latents
    try:
        return class_modes(x, local[keep], labels, cfg.ipc, cfg.seed, None if feats is None else feats[keep],
                           medoid=cfg.mode_target == "medoid")
    except ValueError as e:
        raise UserError(f"mode guidance: {e}; lower --ipc or set mode_guidance to 0") from None


def _guided(model: nn.Module, codec: Codec, labels: list[int], meta: ckpt.CheckpointMeta, cfg: SampleConfig,
            gen: Callable, what: str, embed: Embed | None = None, device: torch.device | None = None
            ) -> torch.Tensor:
    """cfg.ipc samples per class (class-major, the model's space, float) with the guides cfg turns on. Each image keeps
    its seed (cfg.seed, class, index). Image i of a class is guided to the class's mode i. With the deviation term the
    set is made in rounds, round i generating image i of every class, so that every image has its class's earlier
    images (the last DEVIATION_MEMORY of them) to turn away from; images of one round never see each other."""
    base = Guides(cfg_lo=cfg.cfg_sigma_lo, cfg_hi=cfg.cfg_sigma_hi, mode_strength=cfg.mode_guidance,
                  mode_stop=cfg.mode_stop, deviation=cfg.deviation, dev_lo=cfg.deviation_sigma_lo,
                  dev_hi=cfg.deviation_sigma_hi)
    modes = real_modes(cfg, meta, codec, labels, embed, device) if cfg.mode_guidance > 0 else None
    net = torch.as_tensor(meta.class_map)[torch.tensor(labels)]                       # (K,) the network's classes
    if cfg.deviation == 0:
        net_labels = net.repeat_interleave(cfg.ipc)                                   # (K * ipc,) class-major
        seeds = [image_seed(cfg.seed, c, i % cfg.ipc) for i, c in enumerate(net_labels.tolist())]
        g = dataclasses.replace(base, modes=None if modes is None else torch.cat([modes[c] for c in labels]))
        return gen(model, net_labels, seeds, desc=f"sample {what}", guides=g)
    gen = functools.partial(gen, network=sampling_network(model, cfg.precision, cfg.compile))   # compiled once
    done: dict[int, list[torch.Tensor]] = {c: [] for c in labels}
    for i in range(cfg.ipc):
        seeds = [image_seed(cfg.seed, c, i) for c in net.tolist()]
        shape = (model.in_channels, model.input_size, model.input_size)
        memory = torch.stack([torch.stack(done[c][-DEVIATION_MEMORY:]) if i else torch.zeros(0, *shape)
                              for c in labels])                                       # (K, M, C, H, W)
        g = dataclasses.replace(base, memory=memory,
                                modes=None if modes is None else torch.stack([modes[c][i] for c in labels]))
        x = gen(model, net, seeds, desc=f"sample {what}, round {i + 1}/{cfg.ipc}", guides=g)   # (K, C, H, W)
        for c, xi in zip(labels, x):
            done[c].append(xi)
    return torch.cat([torch.stack(done[c]) for c in labels])


def _budgeted(model: nn.Module, codec: Codec, labels: list[int], class_map: list[int], cfg: SampleConfig,
              gen: Callable, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Rounds of `per_round` images per class (decoded as they finish) until the next round would overrun
    the budget or `ipc` per class is reached. Image i of class c has the same seed as in an unbudgeted
    run, so what a budget keeps is a per-class prefix of the full set."""
    budget_s = 60 * cfg.budget_minutes
    per_round = max(1, cfg.batch_size // len(labels))
    # One network for all rounds: with --compile it compiles once, and every round is padded to the
    # first round's batch.
    gen = functools.partial(gen, network=sampling_network(model, cfg.precision, cfg.compile),
                            batch_size=per_round * len(labels))
    t0 = time.time()
    images, out_labels, done, last = [], [], 0, 0.0
    while done < cfg.ipc:
        n = min(per_round, cfg.ipc - done)
        elapsed = time.time() - t0
        if done and dist.any_flag(elapsed + last * n / per_round > budget_s, device):
            break
        ds_labels = torch.tensor([c for c in labels for _ in range(n)])
        net_labels = torch.as_tensor(class_map)[ds_labels]
        seeds = [image_seed(cfg.seed, c, done + i % n) for i, c in enumerate(net_labels.tolist())]
        t1 = time.time()
        x = finite_samples(gen(model, net_labels, seeds, desc=f"round {done // per_round + 1}"), cfg, cfg.ckpt)
        images.append(codec.decode(x))
        out_labels.append(ds_labels)
        last = (time.time() - t1) * per_round / n
        done += n
    x, y = torch.cat(images), torch.cat(out_labels)
    order = torch.sort(y, stable=True).indices   # class-major; within a class, in generation order
    spent = time.time() - t0
    return x[order], y[order], {"minutes": cfg.budget_minutes, "spent_s": round(spent, 2), "per_class": done,
                                "rounds": -(-done // per_round), "stopped": "budget" if done < cfg.ipc else "ipc cap"}


def run_sampling(cfg: SampleConfig, embed: Embed | None = None) -> tuple[Path, dict]:
    """`minimaxdd sample`: sample, then write the set (rank 0) with its manifest."""
    t0 = time.time()
    out = Path(cfg.out)
    if dist.is_main():                     # fail before the work, not after it
        check_set_out(out, cfg.overwrite, input_paths(cfg.ckpt))
    with run_lock(out, enabled=dist.is_main()):
        s, info = sample_checkpoint(cfg, embed)
        if not dist.is_main():
            return out, info
        path = write_synthetic(out, s, manifest(asdict(cfg), cfg.seed, time.time() - t0, **info), cfg.overwrite)
    return path, info
