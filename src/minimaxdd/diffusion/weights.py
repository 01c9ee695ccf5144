"""Loading pretrained weights into our networks, strictly (the only keys allowed to be missing are Difffit
gammas, which are one at init, i.e. absent):
  - the official DiT release (`DiT-XL-2-256x256.pt`, a plain state dict, or a training
    checkpoint with "model"/"ema"), read with torch.load(weights_only=True); the Minimax authors'
    fine-tuned checkpoints too (their pickled argparse.Namespace is allow-listed, their attention
    gammas renamed to ours),
  - a diffusers `DiTTransformer2DModel` folder (config.json + safetensors or bin).
Our own checkpoints load through `minimaxdd.diffusion.checkpoints`.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path

import torch
import torch.nn as nn

from minimaxdd.diffusion.dit import sincos_pos_embed_2d
from minimaxdd.diffusion.networks import (
    DENOISERS,
    DIT_SIZES,
    build_from_config,
    denoiser_config,
    is_difffit_gamma,
)
from minimaxdd.errors import UserError


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`; any missing (non-gamma) or unexpected key, or a shape mismatch, is an error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not is_difffit_gamma(k)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        lines = [f"the weights in {source} do not fit this model:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                lines.append(f"  {title}: {shown}")
        lines.append("  check --model (size and patch) and the data's size and channels against the checkpoint")
        raise UserError("\n".join(lines))
    # absent Difffit gammas keep the model's own values (ones), so the load itself can be strict
    model.load_state_dict({**{k: v for k, v in own.items() if k not in state}, **state})


def infer_dit_config(state: dict[str, torch.Tensor], num_heads: int | None = None) -> dict:
    """DiT config from the shapes of an official-format state dict (heads from the width, unless given)."""
    try:
        w = state["x_embedder.proj.weight"]                  # (D, C, p, p)
        hidden, in_ch, p = w.shape[0], w.shape[1], w.shape[2]
        tokens = state["pos_embed"].shape[1]
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        out = state["final_layer.linear.weight"].shape[0] // (p * p)
        classes = state["y_embedder.embedding_table.weight"].shape[0] - 1
        mlp = state["blocks.0.mlp.fc1.weight"].shape[0] / hidden
    except (KeyError, ValueError) as e:
        raise UserError(f"this state dict is not a DiT (missing {e}); expected official DiT key names") from e
    heads = num_heads or {d: h for d, _, h in DIT_SIZES.values()}.get(hidden)
    if heads is None:
        raise UserError(f"cannot tell the head count of a DiT {hidden} wide; give num_heads")
    size = int(round(tokens ** 0.5)) * p
    gammas = sum(1 for k in state if re.match(r"blocks\.\d+\.gamma1$", k))
    difffit = "none" if gammas == 0 else ("all" if gammas == depth else "half")
    return {"arch": "dit", "input_size": size, "patch_size": p, "in_channels": in_ch, "hidden_size": hidden,
            "depth": depth, "num_heads": heads, "mlp_ratio": mlp, "num_classes": classes,
            "learn_sigma": out == 2 * in_ch, "difffit": "half" if difffit == "none" else difffit}


# The Minimax authors' checkpoints (vimar-gu/MinimaxDiffusion train_dit.py) pickle their argparse.Namespace of
# options beside the weights ({"model", "ema", "opt", "args"}): the one non-tensor type a weights-only load is
# allowed to rebuild here (a plain attribute bag; nothing of it is called).
SAFE_GLOBALS = [argparse.Namespace]

# Their DiT names the two Difffit gammas inside attention `attn.gamma1` (on the qkv output) and `attn.gamma2`
# (on the output projection); ours are `attn.gamma_qkv` and `attn.gamma_proj`. The block-level gammas
# (`blocks.N.gamma1`, `blocks.N.gamma2`) have the same names in both.
_AUTHORS_ATTN_GAMMA = re.compile(r"^(blocks\.\d+\.attn\.)gamma([12])$")


def authors_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with the Minimax authors' attention-gamma names renamed to ours (other keys unchanged)."""
    out = {}
    for k, v in state.items():
        m = _AUTHORS_ATTN_GAMMA.match(k)
        out[f"{m.group(1)}{'gamma_qkv' if m.group(2) == '1' else 'gamma_proj'}" if m else k] = v
    return out


def _refusal(path: Path, e: Exception) -> UserError:
    """The weights-only refusal, saying what the file should hold and how to re-save it safely."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    name = found.group(1) if found else None
    what = f"a pickled {name}" if name else f"something that is not plain data ({type(e).__name__})"
    allow = (f"with torch.serialization.safe_globals([{name}]): ckpt = torch.load(PATH, weights_only=True)"
             if name else "ckpt = torch.load(PATH, weights_only=True) once its extra objects are allow-listed "
                          "with torch.serialization.safe_globals")
    return UserError(
        f"{path} holds {what}; weights are read without running pickled code, so only tensors, numbers, strings, "
        "lists, dicts and an argparse.Namespace load. The file should hold a state dict (parameter name -> tensor) "
        "or a training checkpoint whose 'ema' or 'model' entry is one. If you trust its source, re-save the weights "
        f"alone in Python, allow-listing just that type ({allow}), then torch.save(ckpt['ema'], 'weights.pt') "
        "(or ckpt['model']), and point at weights.pt")


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        raise _refusal(path, e) from e
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
        obj = obj["ema"]   # a DiT training checkpoint: sample with the EMA weights, as DiT's find_model does
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state dict of tensors (parameter name -> tensor, or a checkpoint "
                        "with one under 'ema' or 'model')")
    return authors_to_ours(obj)


def load_official_dit(path: str | Path, expect: str | None = None, num_heads: int | None = None) -> nn.Module:
    """The public DiT release file (e.g. DiT-XL-2-256x256.pt); `expect` checks a registry name."""
    path = Path(path)
    state = _torch_state(path)
    if expect is not None and num_heads is None:
        num_heads = DENOISERS.get(expect.lower(), {}).get("num_heads")
    cfg = infer_dit_config(state, num_heads)
    if expect is not None:
        want = denoiser_config(expect, cfg["input_size"], cfg["in_channels"], cfg["num_classes"], cfg["learn_sigma"])
        if any(want[k] != cfg[k] for k in ("hidden_size", "depth", "patch_size")):
            raise UserError(f"{path} holds a DiT {cfg['hidden_size']} wide, {cfg['depth']} deep, patch "
                            f"{cfg['patch_size']}, not {expect}; drop --model or name the right size")
    model = build_from_config(cfg)
    load_state_strict(model, state, str(path))
    return model


def diffusers_to_dit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers DiTTransformer2DModel state dict under the official DiT names (the inverse of diffusers'
    own conversion script, scripts/convert_dit_to_diffusers.py)."""
    out: dict[str, torch.Tensor] = {}
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"transformer_blocks\.(\d+)\.", k)))
    out["x_embedder.proj.weight"] = state["pos_embed.proj.weight"]
    out["x_embedder.proj.bias"] = state["pos_embed.proj.bias"]
    emb = "transformer_blocks.0.norm1.emb."
    # diffusers stores the time/class embedder once per block; DiT has one. A converted DiT has equal copies.
    for k in state:
        if ".norm1.emb." in k and not k.startswith(emb):
            if not torch.equal(state[k], state[emb + k.split(".norm1.emb.", 1)[1]]):
                raise UserError(f"{k} differs from block 0's embedder: this diffusers model was not converted "
                                "from a DiT (its blocks embed time and class differently)")
    out["t_embedder.mlp.0.weight"] = state[emb + "timestep_embedder.linear_1.weight"]
    out["t_embedder.mlp.0.bias"] = state[emb + "timestep_embedder.linear_1.bias"]
    out["t_embedder.mlp.2.weight"] = state[emb + "timestep_embedder.linear_2.weight"]
    out["t_embedder.mlp.2.bias"] = state[emb + "timestep_embedder.linear_2.bias"]
    out["y_embedder.embedding_table.weight"] = state[emb + "class_embedder.embedding_table.weight"]
    for i in range(depth):
        s, d = f"transformer_blocks.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[d + f"attn.qkv.{part}"] = torch.cat([state[s + f"attn1.to_{n}.{part}"] for n in "qkv"], 0)
            out[d + f"attn.proj.{part}"] = state[s + f"attn1.to_out.0.{part}"]
            out[d + f"mlp.fc1.{part}"] = state[s + f"ff.net.0.proj.{part}"]
            out[d + f"mlp.fc2.{part}"] = state[s + f"ff.net.2.{part}"]
            out[d + f"adaLN_modulation.1.{part}"] = state[s + f"norm1.linear.{part}"]
    for part in ("weight", "bias"):
        out[f"final_layer.linear.{part}"] = state[f"proj_out_2.{part}"]
        out[f"final_layer.adaLN_modulation.1.{part}"] = state[f"proj_out_1.{part}"]
    return out


def load_diffusers_dit(folder: str | Path) -> nn.Module:
    """A diffusers DiTTransformer2DModel folder (e.g. facebook/DiT-XL-2-256's `transformer/`)."""
    folder = Path(folder)
    if (folder / "transformer" / "config.json").exists():
        folder = folder / "transformer"
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise UserError(f"{folder} has no config.json; point at a diffusers DiTTransformer2DModel folder")
    c = json.loads(cfg_path.read_text())
    if c.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise UserError(f"{cfg_path}: norm_type {c.get('norm_type')!r} is not a DiT (ada_norm_zero)")
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise UserError(f"{folder} has no .safetensors or .bin weight file")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file
            state.update(load_file(str(f)))
        else:
            state.update(_torch_state(f))
    hidden = c["num_attention_heads"] * c["attention_head_dim"]
    p, in_ch = c["patch_size"], c["in_channels"]
    cfg = {"arch": "dit", "input_size": c["sample_size"], "patch_size": p, "in_channels": in_ch,
           "hidden_size": hidden, "depth": c["num_layers"], "num_heads": c["num_attention_heads"],
           "mlp_ratio": state["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] / hidden,
           "num_classes": c["num_embeds_ada_norm"], "learn_sigma": (c.get("out_channels") or in_ch) == 2 * in_ch}
    # diffusers recomputes the fixed position table instead of storing it.
    pos = torch.from_numpy(sincos_pos_embed_2d(hidden, c["sample_size"] // p)).float()[None]
    model = build_from_config(cfg)
    load_state_strict(model, {**diffusers_to_dit(state), "pos_embed": pos}, str(folder))
    return model
