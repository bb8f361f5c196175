"""Rank-1 concept editing (sprint finding G): ``W' = W + Σ_i eps_i σ_i u_i v_iᵀ`` on a live model.

eps = -1 removes a singular triple, -1 < eps < 0 dampens it, eps > 0 amplifies it. The edit is
written into the model's real parameters (the bridge's ``W_V``/``W_O``/``W_in``/``W_gate``/
``W_out`` are views of them) and :func:`edited` restores the exact original tensors on exit.

The triples are not taken from the atlas as stored: each one is recomputed (float64) from the
live weights and checked against the atlas (sigma and the stored unit vector, up to sign), so
an edit is refused when the model is not the one the atlas was built from, and the update is
an exact singular triple of the live matrix.

**OV edits and the value bias.** A head writes ``A (x W_V + b_V) W_O`` per position; as the
attention pattern ``A`` sums to 1, that is ``(A x) OV + b_V W_O``: the OV map plus a constant
write ``b_V W_O``. An edit changes the OV map only and keeps that constant write unchanged:

* heads with their own W_V (multi-head attention): ``W_V += eps σ u cᵀ`` with ``c`` the
  d_head vector whose image under ``W_O`` is ``v`` (``cᵀ W_O = vᵀ``). ``b_V``, ``W_O`` and
  ``b_O`` are untouched, so ``b_V W_O`` is unchanged.
* grouped-query heads share W_V (and b_V) with their group, so W_V cannot be edited for one
  head; the edit goes through the head's own W_O: ``W_O[h] += eps σ a vᵀ`` with ``W_V a = u``.
  That would add ``eps σ (b_V·a) v`` to the constant write, so ``b_O`` is corrected by the
  same amount with the opposite sign (a refusal if the model has no b_O and b_V·a ≠ 0).

MLP edits change W_in / W_gate / W_out directly; their biases are constants outside the linear
map and are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from atlas.core.contract import KINDS
from atlas.core.errors import AtlasError, NotFound
from atlas.core.reader import Reader
from atlas.models.svd import factor_svd
from query.editable import check_eps, edit_pairs
from query.probe import Probe, Reading, make_probes, measure, require_causal, resolve_target

MLP_VIEWS = {"mlp_in": "W_in", "mlp_gate": "W_gate", "mlp_out": "W_out"}
# QK directions are not edited: a QK circuit is W_Q W_Kᵀ, whose factors an edit of one
# direction would have to split between the query and key weights.
EDITABLE = tuple(k for k in KINDS if k != "qk")
# A live triple matches the atlas when sigma agrees to this relative tolerance and the stored
# unit vector's |cosine| with the live one is at least MIN_COSINE.
SIGMA_RTOL = 1e-3
MIN_COSINE = 0.999
# What the refusal of an overflowing eps suggests as the top of the sensible range: a triple
# amplified a hundredfold already dominates its matrix (sigma_max / sigma is rarely above 100).
SENSIBLE_MAX_EPS = 100.0


@dataclass
class Direction:
    """One atlas direction (one side of one singular triple) as stored."""

    direction_id: int
    model_id: str
    kind: str
    layer: int
    head: int | None
    sv_index: int
    sigma: float
    side: str
    degenerate: bool
    vector: np.ndarray = field(repr=False)  # a printed report shows where, not the numbers

    @property
    def where(self) -> str:
        head = f" H{self.head}" if self.head is not None else ""
        return f"{self.kind} L{self.layer}{head} sv{self.sv_index}"


@dataclass
class RankOneEdit:
    """A resolved edit: the live triple ``(σ, u, v)`` and the factor eps, plus its route."""

    direction: Direction
    eps: float
    sigma: float
    u: torch.Tensor = field(repr=False)  # float64, the matrix's input space
    v: torch.Tensor = field(repr=False)  # float64, the matrix's output space
    route: str  # which parameters carry it: "W_V", "W_O+b_O", "W_in", ...
    # For OV: the d_head vector that realises the edit through the chosen route (c or a).
    head_vector: torch.Tensor | None = field(default=None, repr=False)


def lookup(a: Reader, direction_ids: Sequence[int]) -> list[Direction]:
    """The atlas rows of ``direction_ids`` (in the given order), or one clear error."""
    rows = a.sql(
        "SELECT direction_id, model_id, kind, layer, head, sv_index, sigma, side, degenerate, "
        "vector FROM directions WHERE list_contains(?, direction_id)",
        [list(direction_ids)],
    ).to_pylist()
    found = {r["direction_id"]: r for r in rows}
    missing = [str(d) for d in direction_ids if d not in found]
    if missing:
        raise NotFound(f"no direction {', '.join(missing)} in {a.location}")
    out = []
    for d in direction_ids:
        r = found[d]
        r["vector"] = np.asarray(r["vector"], dtype=np.float64)
        out.append(Direction(**r))
    return out


def plan(bridge: Any, directions: Sequence[Direction], eps: Sequence[float]) -> list[RankOneEdit]:
    """Recompute each direction's triple from the live weights and choose its route."""
    if len(directions) != len(eps):
        raise AtlasError(f"{len(directions)} directions but {len(eps)} eps values")
    edits = []
    for d, e in zip(directions, eps, strict=True):
        check_eps(e)
        if d.kind not in EDITABLE:
            raise AtlasError(
                f"direction {d.direction_id} is a {d.kind!r} direction; rank-1 edits apply "
                f"to residual-space directions of {', '.join(EDITABLE)} matrices"
            )
        if d.degenerate:
            raise AtlasError(
                f"direction {d.direction_id} ({d.where}) is degenerate: its singular value "
                "ties with a neighbour's or is zero to float32 precision, so the matrix defines "
                "only a span, not this vector"
            )
        if d.layer >= bridge.cfg.n_layers:
            raise AtlasError(f"direction {d.direction_id} is in layer {d.layer}; {_changed()}")
        edit = _plan_ov(bridge, d, e) if d.kind == "ov" else _plan_mlp(bridge, d, e)
        _check_matches(d, edit)
        edits.append(edit)
    return edits


def _changed() -> str:
    return "the live model is not the one this atlas was built from (re-ingest it)"


def _check_matches(d: Direction, edit: RankOneEdit) -> None:
    live = edit.u if d.side == "read" else edit.v
    if live.shape[0] != d.vector.shape[0]:
        raise AtlasError(f"direction {d.direction_id} has width {d.vector.shape[0]}; {_changed()}")
    cosine = abs(float(np.dot(live.cpu().numpy(), d.vector)))
    if abs(edit.sigma - d.sigma) > SIGMA_RTOL * d.sigma or cosine < MIN_COSINE:
        raise AtlasError(
            f"direction {d.direction_id} ({d.where}): live sigma {edit.sigma:.6g} vs atlas "
            f"{d.sigma:.6g}, |cos| {cosine:.4f}; {_changed()}"
        )


def _kv_group(cfg: Any) -> int:
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return int(cfg.n_heads // n_kv)


@torch.no_grad()
def _plan_ov(bridge: Any, d: Direction, eps: float) -> RankOneEdit:
    assert d.head is not None
    attn = bridge.blocks[d.layer].attn
    group = _kv_group(bridge.cfg)
    f = factor_svd(attn.W_V[d.head // group].double()[None], attn.W_O[d.head].double()[None])
    r1, r2, core_u, s, core_v = f.r1[0], f.r2[0], f.core_u[0], f.s[0], f.core_v[0]
    i = d.sv_index
    if i >= s.shape[0]:
        raise AtlasError(f"direction {d.direction_id} ({d.where}): {_changed()}")
    u, v = f.apply_q1(f.core_u)[0, :, i], f.apply_q2(f.core_v)[0, :, i]
    if group == 1:
        # cᵀ W_O = vᵀ with W_O = R2ᵀ Q2ᵀ and v = Q2 V'_i means R2 c = V'_i (pinv: a head of
        # deficient rank has no exact inverse, and its null part is never written anyway).
        c = torch.linalg.pinv(r2) @ core_v[:, i]
        return RankOneEdit(d, eps, float(s[i]), u, v, "W_V", c)
    a = torch.linalg.pinv(r1) @ core_u[:, i]  # W_V a = Q1 R1 a = Q1 U'_i = u
    b_V = attn.b_V
    bias_dot = 0.0 if b_V is None else float(b_V[d.head // group].double() @ a)
    if attn.b_O is None and bias_dot != 0.0:
        raise AtlasError(
            f"direction {d.direction_id} ({d.where}): a grouped-query head with a value bias "
            "but no output bias cannot be edited without changing its constant write"
        )
    route = "W_O" if attn.b_O is None else "W_O+b_O"
    return RankOneEdit(d, eps, float(s[i]), u, v, route, a)


@torch.no_grad()
def _plan_mlp(bridge: Any, d: Direction, eps: float) -> RankOneEdit:
    W = getattr(bridge.blocks[d.layer].mlp, MLP_VIEWS[d.kind])
    if W is None:
        raise AtlasError(f"direction {d.direction_id} ({d.where}): {_changed()}")
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    i = d.sv_index
    return RankOneEdit(d, eps, float(S[i]), U[:, i], Vh[i], MLP_VIEWS[d.kind])


def _targets(bridge: Any, edit: RankOneEdit) -> list[torch.Tensor]:
    """The live parameter views an edit writes into."""
    d = edit.direction
    if d.kind != "ov":
        return [getattr(bridge.blocks[d.layer].mlp, MLP_VIEWS[d.kind])]
    attn = bridge.blocks[d.layer].attn
    if edit.route == "W_V":
        return [attn.W_V]
    return [attn.W_O] + ([attn.b_O] if attn.b_O is not None else [])


def _owning_parameters(bridge: Any, views: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    """The model parameters whose storage the views share (what must be snapshot)."""
    storages = {v.untyped_storage().data_ptr() for v in views}
    owners = [p for p in bridge.parameters() if p.untyped_storage().data_ptr() in storages]
    if len({p.untyped_storage().data_ptr() for p in owners}) != len(storages):
        raise AtlasError(
            "this model's weights are not plain parameters (a weight view does not share "
            "storage with any of them), so it cannot be edited in place"
        )
    return owners


@torch.no_grad()
def _apply(bridge: Any, edit: RankOneEdit) -> None:
    d, scale = edit.direction, edit.eps * edit.sigma
    if d.kind != "ov":
        view = getattr(bridge.blocks[d.layer].mlp, MLP_VIEWS[d.kind])
        view += (scale * torch.outer(edit.u, edit.v)).to(view.dtype)
        return
    assert d.head is not None and edit.head_vector is not None
    attn = bridge.blocks[d.layer].attn
    if edit.route == "W_V":
        W_V = attn.W_V
        W_V[d.head] += (scale * torch.outer(edit.u, edit.head_vector)).to(W_V.dtype)
        return
    group = _kv_group(bridge.cfg)
    W_O = attn.W_O
    W_O[d.head] += (scale * torch.outer(edit.head_vector, edit.v)).to(W_O.dtype)
    if attn.b_V is not None and attn.b_O is not None:
        b_O = attn.b_O
        bias_dot = attn.b_V[d.head // group].double() @ edit.head_vector
        b_O -= (scale * bias_dot * edit.v).to(b_O.dtype)


@contextlib.contextmanager
def edited(bridge: Any, edits: Sequence[RankOneEdit]) -> Iterator[list[RankOneEdit]]:
    """Apply ``edits`` to the live parameters; restore them bit for bit on exit.

    Every edit is planned on the unedited weights (see :func:`plan`), so several directions of
    one matrix add up to ``Σ eps_i σ_i u_i v_iᵀ`` exactly as in the formula.
    """
    views = [v for e in edits for v in _targets(bridge, e)]
    owners = _owning_parameters(bridge, views)
    saved = [(p, p.detach().clone()) for p in owners]
    try:
        for e in edits:
            _apply(bridge, e)
        yield list(edits)
    finally:
        with torch.no_grad():
            for p, original in saved:
                p.copy_(original)


@contextlib.contextmanager
def concept_edit(
    bridge: Any, a: Reader, edits: dict[int, float] | Sequence[tuple[int, float]]
) -> Iterator[list[RankOneEdit]]:
    """``with concept_edit(bridge, atlas, {direction_id: eps, ...}):`` the model is edited.

    Looks the directions up in the atlas, checks them against the live weights, applies
    ``W' = W + Σ eps_i σ_i u_i v_iᵀ`` and restores the original weights bit for bit on exit.
    """
    pairs = edit_pairs(edits)
    directions = lookup(a, [d for d, _ in pairs])
    planned = plan(bridge, directions, [e for _, e in pairs])
    with edited(bridge, planned) as applied:
        yield applied


@dataclass
class EditReport:
    """An edit measured on prompts: what was edited, and each probe before and after."""

    model_id: str
    edits: list[RankOneEdit]
    probes: list[Probe]
    before: list[Reading]
    after: list[Reading]
    tokens: dict[int, list[str]]  # each edited direction's top positive tokens


def boot_model(a: Reader, model_id: str, device: str = "auto") -> Any:
    """Boot ``model_id`` again as it was ingested (spec, weight processing and dtype) and check
    that its shape still matches the atlas."""
    from atlas.models.loading import load_model, resolve_device

    a.require_model(model_id)
    info = a.sql(f"SELECT * FROM {a.relation(model_id, 'models')}").to_pylist()[0]
    dtype = info.get("weight_dtype") or "float32"  # stores from before the column: float32
    loaded = load_model(info["spec"], resolve_device(device), dtype, info["processing"])
    cfg = loaded.bridge.cfg
    if (cfg.d_model, cfg.n_layers) != (info["d_model"], info["n_layers"]):
        raise AtlasError(
            f"{info['spec']!r} now boots with d_model {cfg.d_model} and {cfg.n_layers} layers, "
            f"the atlas has {info['d_model']} and {info['n_layers']}: re-ingest it"
        )
    return loaded.bridge


def check_targets(a: Reader, model_id: str, targets: list[str]) -> None:
    """Refuse a target that is not one token of the model's tokenizer before the model boots
    (the tokenizer alone loads in about a second)."""
    from atlas.models.loading import load_tokenizer

    (info,) = a.sql(f"SELECT spec FROM {a.relation(model_id, 'models')}").to_pylist()
    tokenizer = load_tokenizer(info["spec"])
    for target in targets:
        resolve_target(tokenizer, target)


def measure_edit(
    a: Reader,
    model_id: str,
    edits: dict[int, float] | Sequence[tuple[int, float]],
    pairs: Sequence[tuple[str, str]],
    device: str = "auto",
) -> EditReport:
    """Boot ``model_id``, apply ``edits`` (direction id, eps) and measure each (prompt, target)
    pair's next-token probability and rank before and after; the weights are restored."""
    edits = edit_pairs(edits)
    if not edits:
        raise AtlasError("nothing to edit: give at least one direction and its eps")
    if not pairs:
        raise AtlasError("nothing to measure: give at least one prompt and its target")
    for _, e in edits:
        check_eps(e)
    a.require_model(model_id)
    directions = lookup(a, [d for d, _ in edits])
    foreign = [d for d in directions if d.model_id != model_id]
    if foreign:
        raise AtlasError(
            f"direction {foreign[0].direction_id} belongs to {foreign[0].model_id!r}, "
            f"not {model_id!r}"
        )
    check_targets(a, model_id, [t for _, t in pairs])
    bridge = boot_model(a, model_id, device)
    require_causal(bridge, model_id)
    probes = make_probes(bridge, list(pairs))
    planned = plan(bridge, directions, [e for _, e in edits])
    before = measure(bridge, probes)
    with edited(bridge, planned):
        after = measure(bridge, probes)
    _refuse_broken(probes, before, after, [e for _, e in edits])
    return EditReport(model_id, planned, probes, before, after, _top_tokens(a, directions))


def _refuse_broken(
    probes: Sequence[Probe], before: Sequence[Reading], after: Sequence[Reading], eps: list[float]
) -> None:
    """An edit whose forward pass overflowed, or left every token as likely, measured nothing:
    its p_after would read 1/vocabulary at rank 0, as if it had worked."""
    for probe, b, f in zip(probes, before, after, strict=True):
        if f.broken and not b.broken:
            factors = ", ".join(f"{e:g}" for e in eps)
            raise AtlasError(
                f"eps {factors} breaks the model: after the edit its logits for prompt "
                f"{probe.prompt!r} are {f.broken}, so no probability means anything; "
                f"sensible eps are from -1 (removes the triple) to about {SENSIBLE_MAX_EPS:g} "
                f"(sigma {SENSIBLE_MAX_EPS + 1:g} times as large)"
            )


def _top_tokens(a: Reader, directions: Sequence[Direction]) -> dict[int, list[str]]:
    rows = a.sql(
        "SELECT direction_id, list(token_display ORDER BY rank) AS tokens FROM top_tokens "
        "WHERE list_contains(?, direction_id) AND basis = 'unembed' AND polarity = 'pos' "
        "AND rank < 5 GROUP BY 1",
        [[d.direction_id for d in directions]],
    ).to_pylist()
    return {r["direction_id"]: r["tokens"] for r in rows}
