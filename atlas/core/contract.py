"""The storage contract's vocabulary: table names, matrix kinds and sides (import-light).

A matrix kind stores the residual-space sides of its singular triples (``read`` = U's columns,
``write`` = V's; for a QK circuit ``query`` = U's, ``key`` = V's); the canonical sign is judged
on one of them (``JUDGED_SIDE``); an MLP matrix's other side lives in neuron space
(``NEURON_SIDE``). ``composition`` holds every ordered pair of heads' Q, K and V composition
scores, ``composition_pairs`` the singular direction pairs that carry each score. The columns
of each table are declared in ``atlas.core.schema``.
"""

from __future__ import annotations

from typing import Literal, get_args

TABLES = (
    "models",
    "matrices",
    "directions",
    "top_tokens",
    "top_neurons",
    "vocab",
    "token_bags",
    "coherence_null",
    "composition",
    "composition_pairs",
)
Kind = Literal["ov", "qk", "mlp_in", "mlp_gate", "mlp_out"]  # type hints and HTTP validation
KINDS: tuple[Kind, ...] = get_args(Kind)
HEAD_KINDS = KINDS[:2]
MLP_KINDS = KINDS[2:]
SIDES = ("read", "write", "query", "key")
U_SIDES = ("read", "query")  # the sides that are U's columns (what a matrix reads)
POLARITIES = ("pos", "neg")
SIDES_OF = {
    "ov": ("read", "write"),
    "qk": ("query", "key"),
    "mlp_in": ("read",),
    "mlp_gate": ("read",),
    "mlp_out": ("write",),
}
JUDGED_SIDE = {"ov": "write", "qk": "key", "mlp_in": "read", "mlp_gate": "read", "mlp_out": "write"}
NEURON_SIDE = {"mlp_in": "write", "mlp_gate": "write", "mlp_out": "read"}
# A SQL condition on a ``directions`` row (alias ``d``) that keeps each kind's judged side.
JUDGED_SQL = " OR ".join(f"(d.kind = '{k}' AND d.side = '{s}')" for k, s in JUDGED_SIDE.items())
# Composition modes: what of a later head an earlier head's OV output feeds (Elhage et al. 2021).
MODES = ("Q", "K", "V")
