"""The storage contract's tables, declared once with SQLAlchemy Core (design §4).

Table and column names here are public: users write SQL against them. Bulk rows go in through
Arrow (``atlas.core.store``). SQLAlchemy is imported only where a store is written: readers
need just the names, from ``atlas.core.contract``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    Float,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
)
from sqlalchemy.types import UserDefinedType


class FloatArray(UserDefinedType[Any]):
    """DuckDB ``FLOAT[n]`` (fixed size) or ``FLOAT[]`` (a list) column."""

    cache_ok = True

    def __init__(self, size: int | None = None):
        self.size = size

    def get_col_spec(self, **_kw: Any) -> str:
        return f"FLOAT[{self.size}]" if self.size else "FLOAT[]"


def build_metadata(d_model: int | None) -> MetaData:
    """The atlas tables, in ``contract.TABLES`` order; ``d_model`` fixes the vector width
    (``None``: a variable-length list)."""
    md = MetaData()
    Table(
        "models",
        md,
        Column("model_id", String, primary_key=True),
        Column("spec", String, nullable=False),  # the MODEL argument that boots it again
        Column("source", String, nullable=False),
        Column("architecture", String, nullable=False),
        Column("n_layers", Integer, nullable=False),
        Column("n_heads", Integer, nullable=False),
        Column("n_kv_heads", Integer, nullable=False),
        Column("d_model", Integer, nullable=False),
        Column("d_head", Integer, nullable=False),
        Column("d_mlp", Integer),
        Column("d_vocab", Integer, nullable=False),
        Column("gated_mlp", Boolean, nullable=False),
        # 'rotary': the stored QK circuits are the content part only, without the rotation
        # by position; 'standard', 'shortortho', ...: TransformerLens's positional_embedding_type
        Column("positional_embedding", String),
        Column("processing", String, nullable=False),
        Column("processing_applied", JSON, nullable=False),
        Column("top_k", Integer, nullable=False),
        Column("max_rank", Integer),
        Column("gap_tolerance", Double, nullable=False),
        Column("index_type", String, nullable=False),  # flat or pq-rerank (atlas.core.indexes)
        Column("skipped", JSON, nullable=False),
        Column("device", String, nullable=False),
        Column("weight_dtype", String),  # the dtype the weights were loaded in
        Column("dtype", String, nullable=False),
        Column("versions", JSON, nullable=False),
        Column("stage_seconds", JSON, nullable=False),
        Column("n_matrices", Integer, nullable=False),
        Column("n_directions", Integer, nullable=False),
        Column("ingested_at", DateTime(timezone=True), nullable=False),
    )
    Table(
        "matrices",
        md,
        Column("matrix_id", BigInteger, primary_key=True, autoincrement=False),
        Column("model_id", String, nullable=False),
        Column("layer", SmallInteger, nullable=False),
        Column("head", SmallInteger),
        Column("kind", String, nullable=False),
        Column("n_rows", Integer, nullable=False),
        Column("n_cols", Integer, nullable=False),
        Column("rank", Integer, nullable=False),
        Column("numerical_rank", Integer, nullable=False),
        Column("sigma_max", Double, nullable=False),
        Column("frobenius_norm", Double, nullable=False),
        Column("stable_rank", Double, nullable=False),
        Column("effective_rank", Double, nullable=False),
        Column("spectrum", FloatArray(), nullable=False),
        # Σλ / Σ|λ| over the circuit's eigenvalues (ov and qk; NULL for MLP matrices)
        Column("eigen_positivity", Double),
        # coherence of the pooled top tokens of its largest directions (see atlas.models.coherence)
        Column("coherence", Double),
        Column("coherence_z", Double),
        Column("coherence_pct", Double),
    )
    Table(
        "directions",
        md,
        Column("direction_id", BigInteger, primary_key=True, autoincrement=False),
        Column("matrix_id", BigInteger, nullable=False),
        Column("model_id", String, nullable=False),
        Column("layer", SmallInteger, nullable=False),
        Column("head", SmallInteger),
        Column("kind", String, nullable=False),
        Column("sv_index", Integer, nullable=False),
        Column("sigma", Double, nullable=False),
        Column("side", String, nullable=False),
        Column("sv_gap", Double, nullable=False),
        Column("degenerate", Boolean, nullable=False),
        Column("degenerate_group", Integer),
        Column("coherence_pos", Double),  # score of the top positive tokens
        Column("coherence_neg", Double),  # score of the top negative tokens
        Column("coherence", Double),  # the better of the two
        Column("coherence_z", Double),  # standard score against the model's null
        Column("coherence_pct", Double),  # percent of null scores at or below it
        Column("vector", FloatArray(d_model), nullable=False),
    )
    Table(
        "top_tokens",
        md,
        Column("direction_id", BigInteger, nullable=False),
        Column("polarity", String, nullable=False),
        Column("rank", SmallInteger, nullable=False),
        Column("token_id", Integer, nullable=False),
        Column("token", String, nullable=False),
        Column("token_display", String, nullable=False),
        Column("score", Float, nullable=False),
    )
    Table(
        "top_neurons",
        md,
        Column("direction_id", BigInteger, nullable=False),
        Column("rank", SmallInteger, nullable=False),
        Column("neuron", Integer, nullable=False),
        Column("weight", Float, nullable=False),
    )
    Table(
        "vocab",
        md,
        Column("model_id", String, nullable=False),
        Column("token_id", Integer, primary_key=True, autoincrement=False),
        Column("token", String, nullable=False),
        Column("token_display", String, nullable=False),
        Column("token_norm", String, nullable=False),  # markers stripped, lower case
    )
    Table(
        "token_bags",
        md,
        Column("direction_id", BigInteger, nullable=False),
        Column("token_norm", String, nullable=False),
        Column(
            "weight", Float, nullable=False
        ),  # unit L2 norm per direction (atlas.core.token_space)
    )
    Table(
        "coherence_null",
        md,
        Column("model_id", String, nullable=False),
        Column("scope", String, nullable=False),  # direction | matrix
        Column("sample", Integer, nullable=False),
        Column("coherence", Double, nullable=False),
    )

    def pair() -> list[Column[Any]]:
        return [
            Column("model_id", String, nullable=False),
            Column("src_layer", SmallInteger, nullable=False),  # the writer (its OV output)
            Column("src_head", SmallInteger, nullable=False),
            Column("dst_layer", SmallInteger, nullable=False),  # the reader, a later layer
            Column("dst_head", SmallInteger, nullable=False),
            Column("mode", String, nullable=False),  # Q, K or V (contract.MODES)
        ]

    Table(
        "composition",
        md,
        *pair(),
        Column("score", Double, nullable=False),  # ||L R||_F / (||L||_F ||R||_F)
        Column("baseline", Double, nullable=False),  # 1/sqrt(d_model): random orientations
        Column("relative", Double, nullable=False),  # score / baseline
        Column("top_pairs_share", Double, nullable=False),  # of score², by the pairs kept
    )
    Table(
        "composition_pairs",
        md,
        *pair(),
        Column("rank", SmallInteger, nullable=False),  # 0 = the largest contribution
        Column("src_sv", Integer, nullable=False),
        Column("dst_sv", Integer, nullable=False),
        Column("src_direction_id", BigInteger),  # NULL past the stored rank (max_rank)
        Column("dst_direction_id", BigInteger),
        # (σ_i τ_j (v_i · u'_j))² / (||L||_F² ||R||_F²): all pairs sum to score²
        Column("contribution", Double, nullable=False),
    )
    return md


def create_statements(d_model: int) -> list[str]:
    """DuckDB DDL for a model store whose vectors have width ``d_model``."""
    from duckdb_engine import Dialect
    from sqlalchemy.schema import CreateTable

    dialect = Dialect()
    return [
        str(CreateTable(t).compile(dialect=dialect)) for t in build_metadata(d_model).sorted_tables
    ]


def empty_table_ddl(table: str) -> str:
    """DDL for an empty table of the contract (a view over no store)."""
    return next(s for s in create_statements(0) if s.strip().startswith(f"CREATE TABLE {table} "))
