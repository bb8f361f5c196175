"""The :class:`atlas.core.reader.Reader` contract, run against every concrete reader of one
atlas: its directory (``StoreReader``), a bundle of it (``BundleReader``), a Parquet tree of it
in a folder and behind a URL (``ParquetReader``, the URL through fsspec's in-memory file
system). Each answers every method of the contract the same, checked against the directory's
own tables; a reader that leaves an abstract method out cannot be made."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import atlas
from atlas.core.errors import AtlasError, NotFound
from atlas.core.exchange.parquet_reader import ParquetReader
from atlas.core.exchange.sources import BundleReader, open_reader
from atlas.core.reader import Reader, StoreReader

KINDS = ["directory", "bundle", "tree", "tree_url"]
TABLE_COUNTS = ("models", "matrices", "directions", "top_tokens")


@pytest.fixture(scope="module")
def locations(small_atlas: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("contract")
    with atlas.open(small_atlas) as a:
        a.export(out / "atlas.svdatlas")
        a.export_parquet(out / "tree")
        url = f"memory://contract-{uuid.uuid4().hex}/tree"
        a.export_parquet(url)
    return {
        "directory": str(small_atlas),
        "bundle": str(out / "atlas.svdatlas"),
        "tree": str(out / "tree"),
        "tree_url": url,
    }


@pytest.fixture(scope="module")
def oracle(small_atlas: Path) -> Iterator[Reader]:
    reader = StoreReader(small_atlas)
    yield reader
    reader.close()


@pytest.fixture(scope="module", params=KINDS)
def reader(request: pytest.FixtureRequest, locations: dict[str, str]) -> Iterator[Reader]:
    opened = open_reader(locations[request.param])
    expected = {"directory": StoreReader, "bundle": BundleReader}.get(request.param, ParquetReader)
    assert type(opened) is expected
    yield opened
    opened.close()


def test_models_and_their_rows(reader: Reader, oracle: Reader) -> None:
    assert reader.model_ids() == oracle.model_ids() and len(oracle.model_ids()) == 3
    for model_id in oracle.model_ids():
        reader.require_model(model_id)
        for table in TABLE_COUNTS:
            query = "SELECT count(*) AS n FROM {}"
            got = reader.sql(query.format(reader.relation(model_id, table)))["n"][0].as_py()
            want = oracle.sql(query.format(oracle.relation(model_id, table)))["n"][0].as_py()
            assert got == want > 0, (model_id, table)
        rows = "SELECT direction_id, sigma FROM {} ORDER BY direction_id"
        got_rows = reader.sql(rows.format(reader.relation(model_id, "directions"))).to_pylist()
        assert (
            got_rows == oracle.sql(rows.format(oracle.relation(model_id, "directions"))).to_pylist()
        )
    with pytest.raises(NotFound, match="no model 'nobody'"):
        reader.require_model("nobody")
    with pytest.raises(NotFound):
        reader.relation("nobody", "directions")


def test_which_model_a_direction_belongs_to(reader: Reader, oracle: Reader) -> None:
    owners = oracle.sql("SELECT model_id, min(direction_id) AS lo, max(direction_id) AS hi "
                        "FROM directions GROUP BY model_id").to_pylist()  # fmt: skip
    for row in owners:
        for direction_id in (row["lo"], (row["lo"] + row["hi"]) // 2, row["hi"]):
            assert reader.model_of(direction_id) == row["model_id"]
    with pytest.raises(NotFound):
        reader.model_of(10**12)
    for bad in ("432", 4.5, True):
        with pytest.raises(AtlasError, match="integer"):
            reader.model_of(bad)  # type: ignore[arg-type]


def test_indexes_give_the_same_neighbours(reader: Reader, oracle: Reader) -> None:
    for model_id in oracle.model_ids():
        assert reader.index_bytes(model_id) > 0 and reader.has_vectors(model_id)
        assert reader.has_exact_index(model_id) == oracle.has_exact_index(model_id) is True
        ids = oracle.sql(
            f"SELECT direction_id FROM {oracle.relation(model_id, 'directions')} "
            "ORDER BY direction_id LIMIT 5"
        )["direction_id"].to_numpy()
        vectors = reader.stored_vectors(model_id, ids)
        np.testing.assert_allclose(vectors, oracle.stored_vectors(model_id, ids), atol=1e-6)
        got_scores, got_ids = reader.residual_index(model_id).search(vectors, 4)
        want_scores, want_ids = oracle.residual_index(model_id).search(vectors, 4)
        np.testing.assert_array_equal(got_ids[:, 0], ids)  # each vector finds itself first
        np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
        reader.keep_index(model_id)
        assert model_id in reader.indexes.cached()


def test_unembeddings_and_sizes(reader: Reader, oracle: Reader) -> None:
    sizes = reader.model_sizes()
    assert sorted(sizes) == sorted(oracle.model_ids()) and all(s > 0 for s in sizes.values())
    assert list(reader.model_sizes(["llama-tiny"])) == ["llama-tiny"]
    for model_id in oracle.model_ids():
        assert reader.has_unembedding(model_id) == oracle.has_unembedding(model_id) is True
        unembed = reader.unembedding(model_id)
        np.testing.assert_array_equal(np.asarray(unembed), np.asarray(oracle.unembedding(model_id)))
        reader.keep_unembedding(model_id)
        assert reader.unembedding(model_id).shape == unembed.shape


def test_a_reader_missing_part_of_the_contract_cannot_be_made() -> None:
    class Partial(Reader):
        def model_ids(self) -> list[str]:
            return []

    with pytest.raises(TypeError, match="abstract"):
        Partial("nowhere")  # type: ignore[abstract]
    assert {"model_ids", "relation", "model_of", "_read_index", "index_bytes", "has_exact_index",
            "unembedding", "keep_unembedding", "has_unembedding", "model_sizes"} == set(
        Reader.__abstractmethods__
    )  # fmt: skip
