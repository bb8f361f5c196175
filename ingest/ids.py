"""Where a model's ids go, planned from its first block's shapes before anything is computed.

Ids are laid out kind by kind (OV, each MLP kind, then QK), layer by layer within a kind, as a
whole-model ingest numbers them, so streaming and splitting a job across machines change
nothing in the atlas. The plan needs only the shapes of block 0's matrices: a job can reserve
a model's ids once it has booted it, before any SVD (``ingest.jobs``), and every block is
checked against the plan when its ids are handed out.
"""

from __future__ import annotations

from dataclasses import dataclass

from atlas.core.contract import SIDES_OF
from atlas.core.errors import AtlasError
from atlas.core.publish import IdRange
from ingest.assemble import IdBase
from ingest.decompose import MatrixGroup
from ingest.weights import ModelWeights


@dataclass
class IdLayout:
    """Each kind's directions and matrices per block, and where the model's ids start."""

    kinds: list[str]
    directions: dict[str, int]  # per block
    matrices: dict[str, int]  # per block
    n_blocks: int
    first_direction_id: int = 0
    first_matrix_id: int = 0

    @classmethod
    def plan(cls, block: ModelWeights, n_blocks: int, max_rank: int | None) -> IdLayout:
        """The layout of a model whose blocks all have the shapes of ``block`` (its first)."""
        n_layers, n_heads, d_model, d_head = block.W_V.shape
        head = (n_layers * n_heads, min(d_model, d_head))
        shapes = {"ov": head}
        shapes.update({kind: (m.shape[0], min(m.shape[1:])) for kind, m in block.mlp.items()})
        shapes["qk"] = head
        kept = {kind: rank if max_rank is None else min(rank, max_rank)
                for kind, (_, rank) in shapes.items()}  # fmt: skip
        return cls(
            kinds=list(shapes),
            directions={k: n * kept[k] * len(SIDES_OF[k]) for k, (n, _) in shapes.items()},
            matrices={k: n for k, (n, _) in shapes.items()},
            n_blocks=n_blocks,
        )

    @property
    def n_directions(self) -> int:
        return self.n_blocks * sum(self.directions.values())

    @property
    def n_matrices(self) -> int:
        return self.n_blocks * sum(self.matrices.values())

    def place(self, ids: IdRange) -> None:
        """Start at the reserved range ``ids``, which must be this layout's size."""
        if (ids.n_directions, ids.n_matrices) != (self.n_directions, self.n_matrices):
            raise AtlasError(
                f"the model needs {self.n_directions:,} direction and {self.n_matrices:,} "
                f"matrix ids, but {ids.n_directions:,} and {ids.n_matrices:,} were reserved "
                "for it (did its files change since the job planned it?)"
            )
        self.first_direction_id, self.first_matrix_id = ids.first_direction_id, ids.first_matrix_id

    def bases(self, block: int, groups: list[MatrixGroup]) -> list[IdBase]:
        """The first ids of each group of block ``block``, checked against the plan."""
        shape = {g.kind: (_n_directions(g), int(g.svd.S.shape[0])) for g in groups}
        if [g.kind for g in groups] != self.kinds or any(
            shape[k] != (self.directions[k], self.matrices[k]) for k in self.kinds
        ):
            raise AtlasError(
                f"block {block} differs in shape from block 0; models whose blocks differ "
                "(mixed dense and mixture-of-experts layers, say) are not supported"
            )
        bases, d, m = [], self.first_direction_id, self.first_matrix_id
        for kind in self.kinds:
            per_d, per_m = self.directions[kind], self.matrices[kind]
            bases.append(IdBase(m + block * per_m, d + block * per_d))
            d, m = d + self.n_blocks * per_d, m + self.n_blocks * per_m
        return bases

    def used(self, counts: dict[str, int]) -> IdRange:
        return IdRange(
            self.first_direction_id, counts["directions"], self.first_matrix_id, counts["matrices"]
        )


def _n_directions(g: MatrixGroup) -> int:
    n_mat, rank = g.svd.S.shape
    return int(n_mat * rank * len(SIDES_OF[g.kind]))
