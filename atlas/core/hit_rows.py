"""A store's hit rows: per direction, what a search hit shows, in a file indexed by direction id.

Describing hits through DuckDB costs milliseconds a statement however few rows it reads (two
statements: ``directions``, then ``top_tokens`` of 33 M rows at 1e6 directions). So every store
also holds, derived from those tables when it is written (``atlas.core.store``):

- ``hit-rows.npy``: a numpy structured array, row ``direction_id - first_direction_id``, of
  each direction's id, layer, head (-1: none), kind and side (codes into ``KINDS`` and
  ``SIDES``), sv_index, sigma, degenerate, and its top tokens through the unembedding
  (``top_tokens`` rows of basis ``unembed``), positive and negative, by rank: positions in the
  vocabulary below (-1 past a direction's last token) and their scores;
- ``hit-tokens.json``: that vocabulary, the distinct ``token_display`` strings the rows name.

The array is memory-mapped: describing ``k`` hits reads ``k`` rows. It is listed in the store's
manifest like every file; before it is read its size must be the manifest's, its shape the
model's number of directions, and each row read must carry the id asked for, so a truncated,
replaced or shifted file is refused (:class:`DamagedIndex`, one line) rather than read.
``check`` compares it in full with the tables, and ``check --repair`` writes it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atlas.core.contract import KINDS, SIDES
from atlas.core.errors import AtlasError, DamagedIndex, one_line
from atlas.core.jsondata import load_json
from atlas.core.sqlguard import sql_string
from atlas.core.vectors import numbers, string_array

HIT_ROWS = "hit-rows.npy"
HIT_TOKENS = "hit-tokens.json"
HIT_FILES = (HIT_ROWS, HIT_TOKENS)
CHUNK = 65_536  # directions built (or compared) at a time: bounded memory at any size
REPAIR = "a repair (`check` with `repair`) writes them again"
_META = ("direction_id", "layer", "head", "kind", "side", "sv_index", "sigma", "degenerate")
_META_ORDER = ("direction_id", "layer", "head", "kind", "side", "degenerate", "sv_index", "sigma")


@dataclass(frozen=True)
class HitRow:
    """One direction as a hit shows it (its tokens through W_U, by rank)."""

    direction_id: int
    layer: int
    head: int | None
    kind: str
    side: str
    sv_index: int
    sigma: float
    degenerate: bool
    pos_tokens: list[str]
    pos_scores: list[float]
    neg_tokens: list[str]
    neg_scores: list[float]


def row_dtype(k: int) -> np.dtype:
    """The file's row for ``k`` tokens per polarity (the types of the columns it copies)."""
    return np.dtype(
        [
            ("direction_id", "<i8"),
            ("layer", "<i2"),
            ("head", "<i2"),
            ("kind", "u1"),
            ("side", "u1"),
            ("degenerate", "?"),
            ("sv_index", "<i4"),
            ("sigma", "<f8"),
            ("pos_tokens", "<i4", (k,)),
            ("neg_tokens", "<i4", (k,)),
            ("pos_scores", "<f4", (k,)),
            ("neg_scores", "<f4", (k,)),
        ]
    )


# -- reading through SQL (any reader) ----------------------------------------------------------


def hit_rows_sql(run: Any, directions: str, top_tokens: str, ids: list[int]) -> dict[int, HitRow]:
    """``ids``' hit rows read from the tables (``run(query, params)`` -> Arrow): what a reader
    without the file (a Parquet tree) does, and the file's definition. Plain reads filtered by
    the ids themselves (``Reader.stored_vectors`` says why so)."""
    among = "direction_id = ANY(?)"
    meta = run(f"SELECT {', '.join(_META)} FROM {directions} WHERE {among}", [ids]).to_pylist()
    tokens = run(
        f"SELECT direction_id, polarity, token_display, score FROM {top_tokens} "
        f"WHERE {among} AND basis = 'unembed' ORDER BY direction_id, polarity, rank",
        [ids],
    ).to_pylist()
    lists: dict[tuple[int, str], tuple[list[str], list[float]]] = {}
    for t in tokens:
        words, scores = lists.setdefault((t["direction_id"], t["polarity"]), ([], []))
        words.append(t["token_display"])
        scores.append(t["score"])
    out = {}
    for r in meta:
        pos, pos_scores = lists.get((r["direction_id"], "pos"), ([], []))
        neg, neg_scores = lists.get((r["direction_id"], "neg"), ([], []))
        out[r["direction_id"]] = HitRow(**r, pos_tokens=pos, pos_scores=pos_scores,
                                        neg_tokens=neg, neg_scores=neg_scores)  # fmt: skip
    return out


# -- building the file from a store ------------------------------------------------------------


class _Source:
    """A store's DuckDB file, read for its hit rows: the vocabulary, the row width, the id
    range, and the rows chunk by chunk (in memory of one chunk)."""

    def __init__(self, database: Path):
        self.con = duckdb.connect(":memory:", config={"memory_limit": "1GB"})
        try:
            self.con.execute(f"ATTACH {sql_string(str(database))} AS m (READ_ONLY)")
            self.con.execute(
                "CREATE TEMP TABLE hit_vocab AS SELECT token_display, "
                "(row_number() OVER (ORDER BY token_display) - 1)::INTEGER AS i FROM "
                "(SELECT DISTINCT token_display FROM m.top_tokens WHERE basis = 'unembed')"
            )
            vocab = self.con.sql("SELECT token_display FROM hit_vocab ORDER BY i").fetchall()
            self.vocab: list[str] = [r[0] for r in vocab]
            (max_rank,) = self.con.sql(
                "SELECT max(rank) FROM m.top_tokens WHERE basis = 'unembed'"
            ).fetchall()[0]
            self.k = 0 if max_rank is None else int(max_rank) + 1
            lo, hi, n = self.con.sql(
                "SELECT min(direction_id), max(direction_id), count(*) FROM m.directions"
            ).fetchall()[0]
        except BaseException:
            self.con.close()
            raise
        self.first, self.n = int(lo or 0), int(n)
        self.contiguous = n == 0 or hi - lo + 1 == n

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) of the whole file, ``CHUNK`` directions at a time."""
        for start in range(0, self.n, CHUNK):
            yield start, self._chunk(start, min(start + CHUNK, self.n))

    def _chunk(self, start: int, stop: int) -> np.ndarray:
        lo, hi = self.first + start, self.first + stop
        rows = np.zeros(stop - start, row_dtype(self.k))
        for side in ("pos", "neg"):
            rows[f"{side}_tokens"] = -1
        # a head of NULL (an MLP matrix's direction) is -1
        columns = ", ".join("coalesce(head, -1) AS head" if c == "head" else c for c in _META)
        meta = self.con.sql(
            f"SELECT {columns} FROM m.directions "
            "WHERE direction_id >= ? AND direction_id < ? ORDER BY direction_id",
            params=[lo, hi],
        ).to_arrow_table()
        for name in _META:
            if name in ("kind", "side"):
                rows[name] = _codes(meta[name], KINDS if name == "kind" else SIDES, name)
            else:
                rows[name] = numbers(meta[name])
        tokens = self.con.sql(
            "SELECT t.direction_id, (t.polarity = 'pos')::UTINYINT AS positive, t.rank, v.i, "
            "t.score FROM m.top_tokens t "
            "JOIN hit_vocab v USING (token_display) WHERE t.basis = 'unembed' "
            "AND t.direction_id >= ? AND t.direction_id < ?",
            params=[lo, hi],
        ).to_arrow_table()
        at = numbers(tokens["direction_id"]) - lo
        rank = numbers(tokens["rank"])
        positive = numbers(tokens["positive"]).astype(bool)
        for side, mine in (("pos", positive), ("neg", ~positive)):
            rows[f"{side}_tokens"][at[mine], rank[mine]] = numbers(tokens["i"])[mine]
            rows[f"{side}_scores"][at[mine], rank[mine]] = numbers(tokens["score"])[mine]
        return rows

    def close(self) -> None:
        self.con.close()


def _codes(values: pa.ChunkedArray, names: tuple[str, ...], column: str) -> np.ndarray:
    """Positions of ``values`` in ``names``."""
    codes = pc.index_in(values, value_set=string_array(list(names)))
    if codes.null_count:
        raise ValueError(f"directions.{column} holds a value that is none of {', '.join(names)}")
    return numbers(codes).astype(np.uint8)


def write_hit_rows(database: Path, dest: Path) -> None:
    """Write the hit rows of the store whose DuckDB file is ``database`` into the folder
    ``dest`` (the store's own, or a scratch folder beside it), a chunk at a time."""
    source = _Source(database)
    try:
        if not source.contiguous:
            raise ValueError("its direction ids are not one contiguous range")
        rows = np.lib.format.open_memmap(
            dest / HIT_ROWS, mode="w+", dtype=row_dtype(source.k), shape=(source.n,)
        )
        for start, chunk in source.chunks():
            rows[start : start + len(chunk)] = chunk
        rows.flush()
        del rows
        text = json.dumps(source.vocab, ensure_ascii=False)
        (dest / HIT_TOKENS).write_text(text, encoding="utf-8")
    except ValueError as exc:
        raise AtlasError(f"cannot write {HIT_ROWS} of {database}: {one_line(exc)}") from None
    finally:
        source.close()


def hit_rows_problem(store: Path, database: Path) -> str | None:
    """Why the store's hit rows disagree with its tables (``check``), or None: the file built
    again from the tables, chunk by chunk, and compared."""
    try:
        rows, vocab = _load(store)
    except (OSError, ValueError) as exc:
        return f"cannot be read ({one_line(exc, 160)})"
    source = _Source(database)
    try:
        if not source.contiguous:
            return None  # the ids themselves are reported
        if source.vocab != vocab:
            return f"{HIT_TOKENS} is not the vocabulary of top_tokens"
        if rows.dtype != row_dtype(source.k) or rows.shape != (source.n,):
            shape = f"{rows.shape[0]:,} rows of {rows.dtype.itemsize} bytes"
            return f"has {shape}; the tables make {source.n:,} of {source.k} tokens a polarity"
        wrong = 0
        for start, chunk in source.chunks():
            held = rows[start : start + len(chunk)]
            same = np.ones(len(chunk), bool)
            for name in chunk.dtype.names or ():
                equal = np.asarray(held[name] == chunk[name])
                if chunk[name].dtype.kind == "f":  # a NaN the tables hold is held as it is
                    equal |= np.isnan(held[name]) & np.isnan(chunk[name])
                same &= equal.reshape(len(chunk), -1).all(axis=1)
            wrong += int(np.sum(~same))
        return f"{wrong:,} rows disagree with directions and top_tokens" if wrong else None
    except ValueError as exc:  # the tables hold what no file can (reported by the checks)
        return f"cannot be compared with the tables ({one_line(exc, 160)})"
    finally:
        source.close()


def _load(store: Path) -> tuple[np.ndarray, list[str]]:
    rows = np.load(store / HIT_ROWS, mmap_mode="r", allow_pickle=False)
    try:
        vocab = load_json((store / HIT_TOKENS).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{HIT_TOKENS}: {one_line(exc, 120)}") from None
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise ValueError(f"{HIT_TOKENS} is not a list of strings")
    if rows.ndim != 1 or rows.dtype.names is None or "pos_tokens" not in rows.dtype.names:
        raise ValueError(f"{HIT_ROWS} is not an array of hit rows")
    k = rows.dtype["pos_tokens"].shape[0] if rows.dtype["pos_tokens"].shape else -1
    if rows.dtype != row_dtype(k):
        raise ValueError(f"{HIT_ROWS} has rows of another layout")
    return rows, vocab


# -- reading the file ---------------------------------------------------------------------------


def damaged_hits(model_id: str, why: str) -> DamagedIndex:
    return DamagedIndex(f"model {model_id!r}: its hit rows {why}; {REPAIR}")


class HitFile:
    """A store's hit rows, mapped once they agree with its manifest and catalog entry."""

    def __init__(
        self,
        model_id: str,
        store: Path,
        first_direction_id: int,
        n_directions: int,
        sizes: dict[str, int] | None,
    ):
        self.model_id, self.first = model_id, first_direction_id
        if sizes is not None:
            for name in HIT_FILES:
                path = store / name
                size = path.stat().st_size if path.is_file() else None
                if name not in sizes or size != sizes[name]:
                    held = "is missing" if size is None else f"has {size:,} bytes"
                    listed = f"{sizes[name]:,} bytes" if name in sizes else "no such file"
                    raise damaged_hits(model_id, f"file {name} {held}; its manifest says {listed}")
        try:
            self.rows, self.vocab = _load(store)
            self.words = np.array(self.vocab, dtype=object)  # token position -> its string
        except (OSError, ValueError) as exc:
            raise damaged_hits(model_id, f"cannot be read ({one_line(exc, 160)})") from None
        if self.rows.shape != (n_directions,):
            held = f"has {self.rows.shape[0]:,} rows"
            raise damaged_hits(model_id, f"{held}; the model has {n_directions:,} directions")

    def get(self, ids: list[int]) -> dict[int, HitRow]:
        """The hit rows of ``ids`` (the model's own): a row each."""
        wanted = np.asarray(ids, np.int64)
        rows = self.rows[wanted - self.first]  # a copy of the k rows asked for
        tokens = np.concatenate([rows["pos_tokens"].ravel(), rows["neg_tokens"].ravel()])
        if (
            not np.array_equal(rows["direction_id"], wanted)
            or np.any(rows["kind"] >= len(KINDS))
            or np.any(rows["side"] >= len(SIDES))
            or np.any(tokens >= len(self.vocab))
        ):
            raise damaged_hits(self.model_id, "holds rows that are not the model's directions")
        lists = {}
        for side in ("pos", "neg"):  # whole columns at once: a search's hits, or a trace's 500
            tokens = rows[f"{side}_tokens"]
            words = self.words[tokens].tolist()
            scores = rows[f"{side}_scores"].tolist()
            if np.any(tokens < 0):  # a direction with fewer tokens than the widest
                kept = (tokens >= 0).tolist()
                words = [_kept(w, k) for w, k in zip(words, kept, strict=True)]
                scores = [_kept(x, k) for x, k in zip(scores, kept, strict=True)]
            lists[side] = (words, scores)
        out = {}
        for i, row in enumerate(rows[list(_META_ORDER)].tolist()):
            direction_id, layer, head, kind, side, degenerate, sv_index, sigma = row
            out[direction_id] = HitRow(
                direction_id=direction_id,
                layer=layer,
                head=None if head < 0 else head,
                kind=KINDS[kind],
                side=SIDES[side],
                sv_index=sv_index,
                sigma=sigma,
                degenerate=degenerate,
                pos_tokens=lists["pos"][0][i],
                pos_scores=lists["pos"][1][i],
                neg_tokens=lists["neg"][0][i],
                neg_scores=lists["neg"][1][i],
            )
        return out


def _kept(values: list[Any], kept: list[bool]) -> list[Any]:
    return [v for v, k in zip(values, kept, strict=True) if k]
