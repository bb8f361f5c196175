"""Where an ingest reads a model's blocks from: its files, one block at a time, or a whole
bridge a Python caller booted (or edited) itself."""

from __future__ import annotations

import torch

from atlas.models.loading import LoadedModel, resolve_spec
from ingest.blocks import ModelInfo, model_info, open_blocks
from ingest.options import IngestOptions
from ingest.weights import ModelWeights, block_slice, extract_weights


class Blocks:
    """What the job reads a model from: its identity, shape, unembedding and blocks."""

    spec: str
    default_id: str
    source: str
    vocabulary: list[str]
    info: ModelInfo
    n_blocks: int
    processing: str

    def unembedding(self) -> torch.Tensor:
        raise NotImplementedError

    def block(self, i: int) -> ModelWeights:
        raise NotImplementedError


class StreamedBlocks(Blocks):
    """A MODEL argument read block by block (``ingest.blocks.BlockLoader``)."""

    def __init__(self, options: IngestOptions):
        spec = resolve_spec(options.model)
        self.spec, self.default_id, self.source = spec.spec, spec.default_id, spec.source
        self._loader = open_blocks(spec, options.dtype, options.processing)
        self.vocabulary, self.info = self._loader.vocabulary, self._loader.info
        self.n_blocks, self.processing = self._loader.n_blocks, options.processing

    def unembedding(self) -> torch.Tensor:
        return self._loader.unembedding()

    def block(self, i: int) -> ModelWeights:
        return self._loader.block(i)


class BridgeBlocks(Blocks):
    """A model a Python caller booted (or edited) as a whole: its blocks are slices of it."""

    def __init__(self, loaded: LoadedModel):
        cfg = loaded.bridge.cfg
        self.spec, self.default_id, self.source = loaded.spec, loaded.default_id, loaded.source
        self.vocabulary = loaded.vocabulary
        self._weights = extract_weights(loaded.bridge, "cpu")
        self.n_blocks = int(cfg.n_layers)
        self.info = model_info(cfg, self.n_blocks, loaded.processing_applied)
        self.processing = loaded.processing

    def unembedding(self) -> torch.Tensor:
        return self._weights.W_U

    def block(self, i: int) -> ModelWeights:
        return block_slice(self._weights, i)
