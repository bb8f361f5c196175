"""Circuits: the composition of heads (``composition``, ``composition_pairs``) as questions.

- :func:`strongest`: a model's strongest compositions, per mode;
- :func:`head_edges`: one head's in-edges (who feeds its Q, K and V) and out-edges (whom its
  output feeds), each with the direction pairs that carry it;
- :func:`composition_trace`: from a write direction to the Q, K and V read directions of later
  heads, weighted by their share of each composition score, hop by hop (a V read direction's
  head writes again through its partner write direction; Q and K end a path).

Scores and the pairs' contributions are defined in ``ingest.composition``. A model atlased by
an older format has none of them: each question about it is one line saying to re-ingest it
(``atlas.core.contents``), and a head card says so in place of its circuits.
"""

from __future__ import annotations

from typing import Any

from atlas.core.contents import contents_refusal
from atlas.core.contract import MODES
from atlas.core.errors import AtlasError
from atlas.core.reader import Reader, check_direction_id
from query.cards import check_place

DEFAULT_TOP = 10  # edges per mode
CIRCUITS = "QK circuits or head composition"  # what a model of an older format lacks
EDGE_COLUMNS = (
    "src_layer, src_head, dst_layer, dst_head, mode, score, baseline, relative, top_pairs_share"
)


def strongest(
    a: Reader, model_id: str, modes: tuple[str, ...], top: int, min_relative: float
) -> list[dict[str, Any]]:
    """The ``top`` strongest compositions of each mode in ``modes`` (by score), relative score
    at least ``min_relative``; an edge of score 0 (through a pruned head) is none."""
    a.require_model(model_id)
    a.require_contents(model_id, CIRCUITS)
    return a.sql(
        f"SELECT {EDGE_COLUMNS} FROM ("
        f"  SELECT *, row_number() OVER (PARTITION BY mode ORDER BY score DESC, src_layer, "
        f"  src_head, dst_layer, dst_head) AS n FROM {a.relation(model_id, 'composition')} "
        "  WHERE list_contains(?, mode) AND relative >= ? AND score > 0"  # 0: no composition
        ") WHERE n <= ? ORDER BY mode, score DESC, src_layer, src_head, dst_layer, dst_head",
        [list(modes), min_relative, top],
    ).to_pylist()


def head_edges(
    a: Reader,
    model_id: str,
    layer: int,
    head: int,
    modes: tuple[str, ...],
    top: int,
    min_relative: float,
) -> dict[str, Any]:
    """Head ``layer``/``head``'s ``top`` strongest in-edges and out-edges per mode, each with
    its kept direction pairs (``pairs``: src and dst direction ids, sv indices, contributions,
    which sum to at most score², ``share``: contribution over score², and whether each
    direction is degenerate, its share then one basis choice's)."""
    a.require_model(model_id)
    a.require_contents(model_id, CIRCUITS)
    check_place(a, model_id, layer, head)
    return {
        "model_id": model_id,
        "layer": layer,
        "head": head,
        "in": _edges(a, model_id, "dst", layer, head, modes, top, min_relative),
        "out": _edges(a, model_id, "src", layer, head, modes, top, min_relative),
    }


def _edges(
    a: Reader,
    model_id: str,
    end: str,
    layer: int,
    head: int,
    modes: tuple[str, ...],
    top: int,
    min_relative: float,
) -> list[dict[str, Any]]:
    comp, pairs = a.relation(model_id, "composition"), a.relation(model_id, "composition_pairs")
    edges = a.sql(
        f"SELECT {EDGE_COLUMNS} FROM ("
        f"  SELECT *, row_number() OVER (PARTITION BY mode ORDER BY score DESC, src_layer, "
        f"  src_head, dst_layer, dst_head) AS n FROM {comp} "
        f"  WHERE {end}_layer = ? AND {end}_head = ? AND list_contains(?, mode) "
        "  AND relative >= ? AND score > 0"  # a pruned head's edges: no composition
        ") WHERE n <= ? ORDER BY mode, score DESC, src_layer, src_head, dst_layer, dst_head",
        [layer, head, list(modes), min_relative, top],
    ).to_pylist()
    if not edges:
        return edges
    directions = a.relation(model_id, "directions")
    # a pair's direction in a degenerate group is one basis of its span among many: the pair's
    # share depends on that choice (NULL: not stored, past the ingest's max_rank)
    rows = a.sql(
        "SELECT p.src_layer, p.src_head, p.dst_layer, p.dst_head, p.mode, p.rank, p.src_sv, "
        "p.dst_sv, p.src_direction_id, p.dst_direction_id, p.contribution, "
        "s.degenerate AS src_degenerate, d.degenerate AS dst_degenerate "
        f"FROM {pairs} p LEFT JOIN {directions} s ON s.direction_id = p.src_direction_id "
        f"LEFT JOIN {directions} d ON d.direction_id = p.dst_direction_id "
        f"WHERE p.{end}_layer = ? AND p.{end}_head = ? AND list_contains(?, p.mode) "
        "ORDER BY p.rank",
        [layer, head, list(modes)],
    ).to_pylist()
    by_edge: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r.pop("src_layer"), r.pop("src_head"), r.pop("dst_layer"), r.pop("dst_head"),
               r.pop("mode"))  # fmt: skip
        by_edge.setdefault(key, []).append(r)
    for e in edges:
        key = (e["src_layer"], e["src_head"], e["dst_layer"], e["dst_head"], e["mode"])
        squared = e["score"] ** 2
        e["pairs"] = [{**p, "share": p["contribution"] / squared if squared else None}
                      for p in by_edge.get(key, [])]  # fmt: skip
    return edges


def head_summary(a: Reader, model_id: str, layer: int, head: int, top: int) -> dict[str, Any]:
    """What a head card shows of circuits: its QK circuit (spectrum, statistics, eigenvalue
    positivity; whether positions rotate it) and its strongest edges in and out; for a model
    of an older format, ``circuits_missing``: the line that says why it has none."""
    refusal = contents_refusal(model_id, a.contents_version(model_id), CIRCUITS)
    if refusal is not None:
        return {"qk": None, "positional_embedding": None, "composition": None,
                "circuits_missing": str(refusal)}  # fmt: skip
    qk = a.sql(
        "SELECT matrix_id, sigma_max, frobenius_norm, stable_rank, effective_rank, "
        f"eigen_positivity, spectrum FROM {a.relation(model_id, 'matrices')} "
        "WHERE kind = 'qk' AND layer = ? AND head = ?",
        [layer, head],
    ).to_pylist()
    (model,) = a.sql(
        f"SELECT positional_embedding FROM {a.relation(model_id, 'models')}"
    ).to_pylist()
    positional = model["positional_embedding"]
    edges = head_edges(a, model_id, layer, head, MODES, top, 0.0)
    for e in edges["in"] + edges["out"]:
        del e["pairs"]
    return {
        "qk": qk[0] if qk else None,
        "positional_embedding": positional,
        "composition": {"in": edges["in"], "out": edges["out"]},
    }


def composition_trace(
    a: Reader, direction_id: int, hops: int, min_share: float, limit: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """From the write direction ``direction_id`` (an OV write side) to the read directions of
    later heads that its pairs reach, with ``share`` = the pair's contribution over the edge's
    score² (the part of that composition the pair carries), at least ``min_share``. A V read
    direction continues through its head's partner write direction (same sv_index) on the
    next hop. Rows: the origin (hop 0), then each reached direction with ``hop``, ``parent``
    (the write direction it was reached from), ``mode``, ``share``, ``contribution`` and
    ``tokens`` (its top tokens through the unembedding); at most ``limit`` rows, the origin
    included, the strongest of the last hop kept. The notes say what the limit cut."""
    direction_id = check_direction_id(direction_id)
    model_id = a.model_of(direction_id)
    a.require_contents(model_id, CIRCUITS)
    directions = a.relation(model_id, "directions")
    (origin,) = a.sql(
        "SELECT direction_id, layer, head, kind, side, sv_index, sigma, matrix_id "
        f"FROM {directions} WHERE direction_id = ?",
        [direction_id],
    ).to_pylist()
    matrix_id = origin.pop("matrix_id")
    if (origin["kind"], origin["side"]) != ("ov", "write"):
        # an OV read direction's partner is the write direction to start from
        partner = (
            a.partner(model_id, direction_id, matrix_id, origin["sv_index"])
            if origin["kind"] == "ov"
            else None
        )
        raise AtlasError(
            f"direction {direction_id} is {'a' if origin['kind'] == 'qk' else 'an'} "
            f"{origin['kind']} {origin['side']} direction; a "
            "composition trace starts from an OV write direction (kind ov, side write)"
            + (f": its write partner is direction {partner}" if partner is not None else ""),
            param="direction_id",
        )
    pairs, comp = a.relation(model_id, "composition_pairs"), a.relation(model_id, "composition")
    rows = [{**origin, "hop": 0, "parent": None, "mode": None, "share": None,
             "contribution": None}]  # fmt: skip
    seen, frontier, notes = {direction_id}, [direction_id], []
    reached_by: dict[int, int] = {}  # a partner write direction -> the V read direction
    for hop in range(1, hops + 1):
        if not frontier:
            break
        found = a.sql(  # every pair that passes: a source's pairs are few (the top per edge)
            "SELECT p.src_direction_id AS parent, p.mode, p.contribution, "
            "p.contribution / (c.score * c.score) AS share, d.direction_id, d.layer, d.head, "
            "d.kind, d.side, d.sv_index, d.sigma "
            f"FROM {pairs} p JOIN {comp} c USING (src_layer, src_head, dst_layer, dst_head, mode) "
            f"JOIN {directions} d ON d.direction_id = p.dst_direction_id "
            "WHERE list_contains(?, p.src_direction_id) AND c.score > 0 "  # a zero edge: 0/0
            "AND p.contribution / (c.score * c.score) >= ? "
            "ORDER BY share DESC, d.direction_id",
            [frontier, min_share],
        ).to_pylist()
        new = []
        for r in found:
            if r["direction_id"] not in seen:
                seen.add(r["direction_id"])
                new.append(r)
        room = limit - len(rows)
        if len(new) > room:
            notes.append(
                f"cut at the limit of {limit} directions (the origin included): {len(new) - room} "
                f"more at hop {hop} pass min_share {min_share:g}, and any beyond them were not "
                "followed"
            )
        frontier = []
        for r in new[:room]:
            r["parent"] = reached_by.get(r["parent"], r["parent"])
            rows.append({**r, "hop": hop})
            if r["mode"] == "V":
                frontier.append(r["direction_id"])
        if len(new) > room:
            break
        if frontier:  # the V readers' heads write again: their partner write directions
            partners = a.sql(
                f"SELECT r.direction_id AS read_id, w.direction_id AS write_id "
                f"FROM {directions} r JOIN {directions} w ON w.matrix_id = r.matrix_id "
                "AND w.sv_index = r.sv_index AND w.side = 'write' "
                "WHERE list_contains(?, r.direction_id)",
                [frontier],
            ).to_pylist()
            reached_by = {p["write_id"]: p["read_id"] for p in partners}
            frontier = list(reached_by)
    if len(rows) == 1:  # say why nothing was reached, as a search that finds nothing does
        notes.append(
            f"no stored pair from direction {direction_id} carries min_share {min_share:g} of "
            "an edge's score² (each edge keeps its largest pairs: `circuits` with `pairs` "
            "lists them)"
        )
    hits = a.hit_rows(model_id, [r["direction_id"] for r in rows])
    return [{**r, "tokens": hits[r["direction_id"]].pos_tokens} for r in rows], notes
