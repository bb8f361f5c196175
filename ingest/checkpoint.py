"""A checkpoint's tensors by name, read one at a time: what streaming ingest reads a block from.

Safetensors files (one, or several with their ``model.safetensors.index.json``) are read one
tensor at a time, in the dtype it is stored in; each file is opened (memory-mapped) only for
that read, so the pages of tensors already read are not kept resident. PyTorch ``.bin``
checkpoints are loaded memory-mapped and weights-only (no code runs). Random models
(``atlas.models.random_models.RandomTensors``) offer the same two methods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch

from atlas.core.errors import AtlasError, one_line


class TensorSource(Protocol):
    def names(self) -> set[str]: ...

    def get(self, name: str) -> torch.Tensor: ...


class CheckpointTensors:
    """The tensors of a local checkpoint folder (see the module notes)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._where: dict[str, Any] = {}
        safetensors = sorted(folder.glob("*.safetensors"))
        try:
            if safetensors:
                self._open_safetensors(safetensors)
            else:
                self._open_pickles(sorted(folder.glob("*.bin")))
        except (OSError, RuntimeError, ValueError) as exc:
            raise AtlasError(f"cannot read the weights in {folder}: {one_line(exc)}") from None
        if not self._where:
            raise AtlasError(f"{folder} holds no weights (*.safetensors or *.bin)")

    def _open_safetensors(self, files: list[Path]) -> None:
        from safetensors import safe_open

        index = self.folder / "model.safetensors.index.json"
        listed = None
        if index.is_file():  # a sharded checkpoint: only the files its index names
            listed = set(json.loads(index.read_text())["weight_map"].values())
        for file in files:
            if listed is not None and file.name not in listed:
                continue
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                    self._where[name] = file

    def _open_pickles(self, files: list[Path]) -> None:
        for file in files:
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            for name, tensor in state.items():
                self._where[name] = {name: tensor}

    def names(self) -> set[str]:
        return set(self._where)

    def get(self, name: str) -> torch.Tensor:
        holder = self._where[name]
        if isinstance(holder, dict):
            return holder[name]
        from safetensors import safe_open

        with safe_open(str(holder), framework="pt") as handle:
            return handle.get_tensor(name)  # its own copy: it outlives the mapping
