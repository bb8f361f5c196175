"""Local model folders with a planted head composition, and their circuits from the folder's
own safetensors with numpy (the oracle of ``integration/test_circuits_oracle.py``).

A composition is planted by making an earlier head's OV circuit write one unit direction ``r``
(rank 1: ``W_O[h] = outer(a, r)``) and a later head read exactly ``r`` on one side (its query
``W_Q[h] = outer(r, b)``, or its key): that pair's score is 1, every other pair's is near the
random baseline 1/sqrt(d_model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from atlas.models.random_models import random_config, save_random_model


@dataclass(frozen=True)
class Plant:
    """Head ``src`` (layer, head) writes ``r``; head ``dst`` reads it in ``mode`` (Q or K)."""

    src: tuple[int, int]
    dst: tuple[int, int]
    mode: str


# GPT-2: K-composition (GPT-2 has a key per head); Llama (grouped-query: heads 4-7 share key
# head 1): Q-composition, into a query head of its own.
PLANTS = {"gpt2-tiny": Plant((0, 1), (2, 3), "K"), "llama-tiny": Plant((0, 1), (2, 5), "Q")}


@dataclass
class Heads:
    """Per-head factors in the row convention ``x @ M``: ``W_Q``, ``W_K``, ``W_V`` are
    ``[L, H, d_model, d_head]`` (grouped K/V repeated per query head), ``W_O`` is
    ``[L, H, d_head, d_model]``; float64."""

    W_Q: np.ndarray
    W_K: np.ndarray
    W_V: np.ndarray
    W_O: np.ndarray


def planted_folder(shape: str, folder: Path) -> Path:
    """``random:<shape>`` saved as a local folder, with ``PLANTS[shape]`` planted."""
    save_random_model(shape, folder)
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    config = random_config(shape)
    plant, rng = PLANTS[shape], np.random.default_rng(0)
    d_model = config.hidden_size
    d_head = d_model // config.num_attention_heads
    r = _unit(rng.standard_normal(d_model))
    a, b = _unit(rng.standard_normal(d_head)), _unit(rng.standard_normal(d_head))
    (sl, sh), (dl, dh) = plant.src, plant.dst
    if shape.startswith("gpt2"):
        c_proj = f"transformer.h.{sl}.attn.c_proj.weight"  # [H * d_head, d_model]
        tensors[c_proj][sh * d_head : (sh + 1) * d_head] = np.outer(a, r)
        c_attn = f"transformer.h.{dl}.attn.c_attn.weight"  # [d_model, 3 d_model]: q, k, v
        side = {"Q": 0, "K": 1}[plant.mode] * d_model
        tensors[c_attn][:, side + dh * d_head : side + (dh + 1) * d_head] = np.outer(r, b)
    else:
        o_proj = f"model.layers.{sl}.self_attn.o_proj.weight"  # [d_model, H * d_head]
        tensors[o_proj][:, sh * d_head : (sh + 1) * d_head] = np.outer(r, a)
        assert plant.mode == "Q"
        q_proj = f"model.layers.{dl}.self_attn.q_proj.weight"  # [H * d_head, d_model]
        tensors[q_proj][dh * d_head : (dh + 1) * d_head] = np.outer(b, r)
    save_file(tensors, str(path))
    return folder


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x)).astype(np.float32)


def raw_heads(folder: Path, shape: str) -> Heads:
    """The heads' factors straight from ``model.safetensors`` (raw weights)."""
    w = {k: v.astype(np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()}
    config = random_config(shape)
    d_model, n_heads = config.hidden_size, config.num_attention_heads
    d_head = d_model // n_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    Q, K, V, W_O = [], [], [], []
    for layer in range(config.num_hidden_layers):
        if shape.startswith("gpt2"):
            p = f"transformer.h.{layer}.attn."
            qkv, proj = w[p + "c_attn.weight"], w[p + "c_proj.weight"]
            q, k, v = (qkv[:, i * d_model : (i + 1) * d_model] for i in range(3))
        else:
            p = f"model.layers.{layer}.self_attn."
            q, k, v = (w[p + f"{n}_proj.weight"].T for n in "qkv")
            proj = w[p + "o_proj.weight"].T
        group = n_heads // n_kv
        Q.append([q[:, h * d_head : (h + 1) * d_head] for h in range(n_heads)])
        K.append([k[:, (h // group) * d_head : (h // group + 1) * d_head] for h in range(n_heads)])
        V.append([v[:, (h // group) * d_head : (h // group + 1) * d_head] for h in range(n_heads)])
        W_O.append([proj[h * d_head : (h + 1) * d_head] for h in range(n_heads)])
    return Heads(*(np.array(x) for x in (Q, K, V, W_O)))


def composition_scores(heads: Heads, mode: str) -> np.ndarray:
    """``[L, H, L, H]``: ||L R||_F / (||L||_F ||R||_F) on the explicit d_model x d_model
    matrices (zero unless the source layer is earlier), as Elhage et al. define it."""
    n_layers, n_heads = heads.W_Q.shape[:2]
    OV = heads.W_V @ heads.W_O
    QK = heads.W_Q @ heads.W_K.transpose(0, 1, 3, 2)
    reader = {"Q": QK, "K": QK.transpose(0, 1, 3, 2), "V": OV}[mode]
    out = np.zeros((n_layers, n_heads, n_layers, n_heads))
    for sl in range(n_layers):
        for dl in range(sl + 1, n_layers):
            for sh in range(n_heads):
                left = OV[sl, sh]
                for dh in range(n_heads):
                    right = reader[dl, dh]
                    out[sl, sh, dl, dh] = np.linalg.norm(left @ right) / (
                        np.linalg.norm(left) * np.linalg.norm(right)
                    )
    return out
