"""Checkpoints: safetensors with the weights and a JSON header that says how to rebuild the model.

A checkpoint `RUN/ckpt-00001000.safetensors` holds `model.*` (raw) and `ema.*` weights; its
metadata key "minimaxdd" is JSON with the model config, the codec, class names, the class map
(dataset label -> network class index), the step, the training config and the sampling / evaluation
defaults the model was made for. The optimizer state for `--resume` sits beside it in
`ckpt-00001000.optim.pt` (tensors only, weights_only-loadable).

A Difffit fine-tune trains ~0.3% of a DiT-XL/2 (1.7M of 675M parameters), so its checkpoint holds only
the trained tensors (raw and EMA) and names its base: `base` = the base file's path, size and sha256 and
the list of trained parameters. Loading rebuilds the base (checked to be the very file it was fine-tuned
from) and puts the trained tensors on top, strictly: a few MB instead of 5.4 GB per checkpoint.
From-scratch runs (and `--trainable full`) keep full checkpoints.

The base is identified by its sha256 (of the file; of one of our .safetensors checkpoints, of its tensors
without the metadata, so a base rewritten with other notes but the same weights stays the same base).
Hashing a 2.7 GB file takes seconds, so each file's hash is cached
under $MINIMAXDD_CACHE/sha256, keyed by (absolute path, size, modification time): the first load of a base
hashes it, later ones only stat it. A file changed in place keeping its size and mtime would pass unseen;
anything else (missing, moved, rewritten, another size) is refused with what to do.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from minimaxdd.diffusion.networks import build_from_config
from minimaxdd.diffusion.weights import load_diffusers_dit, load_official_dit, load_state_strict
from minimaxdd.errors import UserError
from minimaxdd.files import atomic_file, cache_dir, read_cache, save_atomic, write_json, writing_cache

FORMAT = 2          # ours: the version of the metadata layout below; 2 added `base` and `defaults`
READABLE = (1, 2)   # format 1 (no base, no defaults) reads as a full checkpoint without defaults
_CKPT = re.compile(r"ckpt-(\d+)\.safetensors$")
OFFICIAL_SUFFIXES = (".pt", ".pth", ".bin")   # official DiT releases and the Minimax authors' checkpoints

# What a model fine-tuned from the official DiT is sampled and evaluated with, unless told otherwise:
# guidance 4.0 on the first 3 latent channels (DiT's sample.py default scale and its forward_with_cfg quirk,
# which the Minimax reference samples with) and IDC's protocol (the paper's ImageNet-subset evaluation).
OFFICIAL_DIT_DEFAULTS = {"sample": {"cfg": 4.0, "cfg_channels": 3}, "evaluate": {"protocol": "idc"}}


@dataclass
class CheckpointMeta:
    model: dict                      # denoiser config dict ({"arch": ..., ...})
    codec: str                       # "pixel" or "vae:DIR"
    class_names: list[str]
    class_map: list[int]             # dataset label i is network class class_map[i]
    image_size: int
    channels: int
    step: int = 0
    data: str | None = None
    extra: dict = field(default_factory=dict)   # training config, objective, losses, ...
    formulation: str = "ddpm"        # a key of diffusion.formulations.FORMULATIONS (older checkpoints: ddpm)
    # Difffit-only checkpoints: {"path", "size", "sha256", "kind", "trained": [parameter names]}; the file then
    # holds the trained tensors only and loads on top of that base. None: a full checkpoint.
    base: dict | None = None
    # defaults for what reads the checkpoint: {"sample": {"cfg": ..., "cfg_channels": ..., "sampler": ...,
    # "steps": ...}, "evaluate": {"protocol": ...}}; a flag or config value wins over them
    defaults: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """The metadata as the JSON string stored in the safetensors header."""
        return json.dumps({"format": FORMAT, **self.__dict__})

    @classmethod
    def from_json(cls, s: str, source: str) -> "CheckpointMeta":
        """Parse the header JSON of `source`; a format not in READABLE is a UserError."""
        d = json.loads(s)
        if d.pop("format", None) not in READABLE:
            raise UserError(f"{source}: unknown checkpoint format; it was written by another minimaxdd version")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# the identity of a base file


def _hash_file(path: Path) -> str:
    """sha256 of the file's bytes; of a .safetensors file, of its tensors only (names, dtypes, shapes and data,
    not the metadata), so a checkpoint rewritten with other notes (a resumed run's config) is the same base."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            n = int.from_bytes(f.read(8), "little")                      # the header's length
            header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            h.update(json.dumps(header, sort_keys=True).encode())
        while chunk := f.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached by (absolute path, size, mtime): hashed once per version of the file."""
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_dir() / "sha256" / f"{key}.json"
    known = read_cache(memo, lambda p: str(json.loads(p.read_text())["sha256"]))
    if known is not None:
        return known
    digest = _hash_file(path)
    with writing_cache(memo):
        write_json(memo, {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest})
    return digest


def _weight_files(folder: Path) -> list[Path]:
    """The files that define a diffusers model folder: its config and weights (the `transformer/` inside a
    pipeline folder)."""
    if (folder / "transformer" / "config.json").exists():
        folder = folder / "transformer"
    return [folder / "config.json", *sorted(folder.glob("*.safetensors")), *sorted(folder.glob("*.bin"))]


def base_kind(path: str | Path) -> str:
    """What a base path holds: "minimaxdd" (our checkpoint or run), "official" (a DiT .pt: the release or
    the Minimax authors' checkpoint) or "diffusers" (a DiTTransformer2DModel folder)."""
    p = Path(path)
    diffusers_cfg = (p / "config.json").exists() or (p / "transformer" / "config.json").exists()
    if p.is_dir() and diffusers_cfg and not list_checkpoints(p):
        return "diffusers"
    return "official" if p.suffix in OFFICIAL_SUFFIXES else "minimaxdd"


def identity(path: str | Path) -> dict:
    """{"path", "size", "sha256", "kind"} of a base: the resolved file (a run's latest checkpoint), or for a
    diffusers folder the hash over its config and weight files."""
    kind = base_kind(path)
    if kind == "diffusers":
        files = _weight_files(Path(path))
        h = hashlib.sha256("".join(f"{f.name}:{file_sha256(f)}\n" for f in files).encode())
        return {"path": str(Path(path).resolve()), "size": sum(f.stat().st_size for f in files),
                "sha256": h.hexdigest(), "kind": kind}
    p = resolve(path) if kind == "minimaxdd" else Path(path)
    if not p.exists():
        raise UserError(f"base weights {p} do not exist")
    return {"path": str(p.resolve()), "size": p.stat().st_size, "sha256": file_sha256(p), "kind": kind}


def _check_base(base: dict, source: str) -> None:
    """The base a Difffit checkpoint names is there and is the same file (UserError says what to do)."""
    p = Path(base["path"])
    n = len(base.get("trained", []))
    if not p.exists():
        raise UserError(f"{source} holds only the {n} fine-tuned tensors and loads on top of its base "
                        f"{p} (sha256 {base['sha256'][:16]}...), which is missing; put that file back at that "
                        "path (a copy or a link) and load again")
    now = identity(p)
    if now["sha256"] != base["sha256"]:
        raise UserError(f"{source} was fine-tuned from {p} with sha256 {base['sha256'][:16]}... ({base['size']} "
                        f"bytes); the file there now has sha256 {now['sha256'][:16]}... ({now['size']} bytes). Its "
                        "tensors only make sense on the original base: restore that file at that path")


def ckpt_path(run: Path, step: int) -> Path:
    """RUN/ckpt-<step, 8 digits>.safetensors."""
    return Path(run) / f"ckpt-{step:08d}.safetensors"


def list_checkpoints(run: str | Path) -> list[Path]:
    """The checkpoints of a run directory, by step."""
    run = Path(run)
    return sorted((p for p in run.glob("ckpt-*.safetensors") if _CKPT.search(p.name)),
                  key=lambda p: int(_CKPT.search(p.name).group(1)))


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or the latest checkpoint of a run directory."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise UserError(f"{path} has no ckpt-*.safetensors; train into it first or name a checkpoint file")
        return found[-1]
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def _stored(meta: CheckpointMeta, module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of `module` a checkpoint stores: all of them, or a Difffit checkpoint's trained ones."""
    state = module.state_dict()
    if meta.base is not None:
        state = {k: state[k] for k in meta.base["trained"]}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save(path: Path, model: nn.Module, ema: nn.Module | None, meta: CheckpointMeta,
         optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write atomically (temporary name, then rename); the optimizer file first, the weights last.
    With `meta.base` set, only the trained tensors `meta.base["trained"]` are written."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if optimizer is not None:
        save_atomic(optimizer.state_dict(), path.with_suffix(".optim.pt"))
    tensors = {f"model.{k}": v for k, v in _stored(meta, model).items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in _stored(meta, ema).items()})
    with atomic_file(path) as tmp:          # the umask's mode; a full disk is a message naming the file
        save_file(tensors, str(tmp), metadata={"minimaxdd": meta.to_json()})


def read_meta(path: str | Path) -> CheckpointMeta:
    """The metadata of a checkpoint (or a run's latest), without loading its tensors."""
    from safetensors import safe_open

    path = resolve(path)
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
    if "minimaxdd" not in md:
        raise UserError(f"{path} is a safetensors file without minimaxdd metadata; "
                        "official DiT weights load through `finetune --ckpt`")
    return CheckpointMeta.from_json(md["minimaxdd"], str(path))


# Sane bounds on a model config read from a file, checked before anything is built: every integer in it
# (widths, depths, sides, classes) at most 2^16, DiT-XL/2's largest is 1152; a DiT's sin-cos position table,
# computed in full even on the meta device, at most 2^28 numbers (1 GiB; DiT-XL/2 at 512 px: 1024 x 1152).
MAX_CONFIG_INT = 1 << 16
MAX_POSITION_TABLE = 1 << 28
# A network may have at most this many more parameters than the file stores for it (Difffit's gammas, one
# at initialisation, may be left out; ours: a generous margin).
SPARE_PARAMETERS = 1 << 20


def _header_shapes(path: Path, prefix: str) -> dict[str, tuple[int, ...]]:
    """The shapes of the tensors named `prefix`* in a safetensors file, from its header (nothing loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k[len(prefix):]: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(prefix)}


def check_fits(config: dict, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Refuse a model config (a checkpoint's metadata) that is out of sane bounds or describes another network
    than the tensors `shapes` (name -> shape, from the file's header) hold, before the network is built: the
    network is laid out on the meta device, which allocates nothing."""
    fix = "the file is damaged or its metadata was edited: re-download it, or re-run the training that wrote it"
    ints = [(k, v) for k, v in config.items() for v in (v if isinstance(v, list) else [v])
            if isinstance(v, int) and not isinstance(v, bool)]
    bad = [f"{k}={v}" for k, v in ints if not 0 <= v <= MAX_CONFIG_INT]
    tokens = (config.get("input_size", 0) // max(1, config.get("patch_size", 1))) ** 2
    if not bad and tokens * config.get("hidden_size", 0) > MAX_POSITION_TABLE:
        bad = [f"input_size={config['input_size']}, patch_size={config.get('patch_size')}, "
               f"hidden_size={config['hidden_size']}"]
    if bad:
        raise UserError(f"{source}: its model config is out of sane bounds ({', '.join(bad)}; integers up to "
                        f"{MAX_CONFIG_INT}); {fix}")
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in build_from_config(config).state_dict().items()}
    wrong = [f"{k}: file {shapes[k]} vs config {own[k]}" for k in own if k in shapes and shapes[k] != own[k]]
    claimed, stored = (sum(math.prod(s) for s in d.values()) for d in (own, shapes))
    if wrong or claimed > stored + SPARE_PARAMETERS:
        what = (f"shapes differ: {'; '.join(wrong[:3])}" if wrong else
                f"it describes a network of {claimed:,} parameters but the file holds {stored:,}")
        raise UserError(f"{source}: its model config does not fit its tensors ({what}); {fix}")


def _overlay(model: nn.Module, state: dict[str, torch.Tensor], trained: list[str], source: str) -> None:
    """Put a Difffit checkpoint's tensors on top of the base weights in `model`: exactly the trained names,
    each of the model's shape."""
    own = model.state_dict()
    missing = sorted(set(trained) - set(state))
    unexpected = sorted(set(state) - set(trained))
    foreign = sorted(k for k in state if k not in own)
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or foreign or wrong:
        raise UserError(f"{source} does not fit its base: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                        f"not in the model {foreign[:5]}, shape mismatch {wrong[:5]}")
    model.load_state_dict({**own, **state})


def load_network(path: str | Path) -> tuple[nn.Module, CheckpointMeta | None]:
    """Any base a fine-tuning or an ablation starts from, with its EMA weights: one of our checkpoints (or a
    run's latest; its metadata returned too), an official-format DiT .pt, or a diffusers DiT folder."""
    kind = base_kind(path)
    if kind == "diffusers":
        return load_diffusers_dit(path), None
    if kind == "official":
        return load_official_dit(path), None
    return load(path, "ema")


def base_defaults(path: str | Path) -> dict:
    """The sampling / evaluation defaults of a base: our checkpoints carry theirs; the official DiT's are
    OFFICIAL_DIT_DEFAULTS."""
    if base_kind(path) == "minimaxdd":
        return read_meta(path).defaults
    return json.loads(json.dumps(OFFICIAL_DIT_DEFAULTS))   # a copy


def _base_network(meta: CheckpointMeta, source: str) -> nn.Module:
    """The base a Difffit checkpoint names, checked to be the same file and the same network."""
    _check_base(meta.base, source)
    model, _ = load_network(meta.base["path"])
    if model.config.to_dict() != meta.model:
        raise UserError(f"{source}: its base {meta.base['path']} builds another network than the one fine-tuned")
    return model


def load(path: str | Path, weights: str = "ema",
         device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from a checkpoint (or a run's latest) with its `ema` or raw `model` weights; a
    Difffit checkpoint on top of its (checked) base."""
    from safetensors.torch import load_file

    path = resolve(path)
    meta = read_meta(path)
    if meta.base is None:       # before the tensors are read: a header that claims a huge network costs nothing
        check_fits(meta.model, _header_shapes(path, f"{weights}."), f"{path} ({weights})")
    tensors = load_file(str(path))
    prefix = f"{weights}."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state and meta.base is None:
        have = sorted({k.split(".")[0] for k in tensors})
        raise UserError(f"{path} has no {weights!r} weights (it has: {', '.join(have)})")
    if meta.base is not None:
        model = _base_network(meta, str(path))
        _overlay(model, state, meta.base["trained"], f"{path} ({weights})")
    else:
        model = build_from_config(meta.model)
        load_state_strict(model, state, f"{path} ({weights})")
    return model.to(device), meta


def load_pair(path: Path, model: nn.Module, ema: nn.Module) -> None:
    """Load both raw and EMA weights into existing modules (for --resume). For a Difffit checkpoint the
    modules must hold its base already (fine-tuning built them from it); its tensors go on top."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    tensors = load_file(str(path))
    for prefix, m in (("model.", model), ("ema.", ema)):
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if meta.base is not None:
            _overlay(m, state, meta.base["trained"], str(path))
        else:
            load_state_strict(m, state, str(path))
