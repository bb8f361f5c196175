"""The query commands end to end: read-only SQL, output formats, light imports, cards, ANN."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import atlas
from atlas.core.check import check_atlas
from atlas.core.exchange.load import load_bundle
from atlas.core.indexes import is_exact
from ingest.job import IngestOptions, ingest
from tests.support.helpers import assert_one_error_line, cli_env, fingerprint, quiet, run_cli
from tests.support.tiny_models import tiny_gpt2


@pytest.mark.parametrize(
    "statement",
    [
        "DROP VIEW directions",
        "INSERT INTO top_tokens SELECT * FROM top_tokens",
        "CREATE TABLE x AS SELECT 1",
        "COPY directions TO '/tmp/x.csv'",
        "SELECT 1; DROP TABLE models",
    ],
)
def test_sql_is_read_only_by_default(minilm_atlas: Path, statement: str) -> None:
    before = fingerprint(minilm_atlas)
    line = assert_one_error_line(run_cli("--atlas", minilm_atlas, "sql", statement))
    assert "read-only" in line or "exactly one" in line
    assert fingerprint(minilm_atlas) == before
    assert not (minilm_atlas / "user.duckdb").exists()


def test_bad_sql_gives_duckdb_message_on_one_line(minilm_atlas: Path) -> None:
    line = assert_one_error_line(run_cli("--atlas", minilm_atlas, "sql", "SELECT nope FROM models"))
    assert "Binder Error" in line and "nope" in line


def test_write_keeps_user_tables_and_never_model_data(minilm_atlas: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "atlas"
    shutil.copytree(minilm_atlas, root)
    before = fingerprint(root)
    made = run_cli(
        "--atlas",
        root,
        "sql",
        "--write",
        "CREATE TABLE strong AS SELECT * FROM head_summary WHERE sigma_max > 3",
    )
    assert made.returncode == 0, made.stderr
    assert fingerprint(root) == before  # model stores untouched
    again = run_cli("--atlas", root, "sql", "SELECT count(*) AS n FROM strong", "--format", "json")
    expected = run_cli(
        "--atlas",
        root,
        "sql",
        "SELECT count(*) AS n FROM head_summary WHERE sigma_max > 3",
        "--format",
        "json",
    )
    assert json.loads(again.stdout) == json.loads(expected.stdout)
    refused = run_cli(
        "--atlas", root, "sql", "--write", "INSERT INTO directions SELECT * FROM directions LIMIT 1"
    )
    assert refused.returncode != 0 and fingerprint(root) == before


def test_sql_formats_and_parquet(minilm_atlas: Path, tmp_path: Path) -> None:
    q = "SELECT layer, head, sigma_max FROM head_summary ORDER BY layer, head LIMIT 5"
    as_json = json.loads(run_cli("--atlas", minilm_atlas, "sql", q, "--format", "json").stdout)
    as_csv = run_cli("--atlas", minilm_atlas, "sql", q, "--format", "csv").stdout.splitlines()
    table = run_cli("--atlas", minilm_atlas, "sql", q).stdout.splitlines()
    assert [r["head"] for r in as_json] == [0, 1, 2, 3, 4]
    assert as_csv[0] == "layer,head,sigma_max" and len(as_csv) == 6
    assert table[0].split() == ["layer", "head", "sigma_max"] and len(table) == 6
    out = tmp_path / "r.parquet"
    assert run_cli("--atlas", minilm_atlas, "sql", q, "--out", out).returncode == 0
    assert pq.read_table(out).to_pylist() == as_json


def test_views_agree_with_tables(minilm_atlas: Path) -> None:
    with atlas.open(minilm_atlas) as a:
        view = a.sql(
            "SELECT direction_id, pos_tokens, neg_scores FROM direction_tokens "
            "WHERE direction_id = 2497"
        ).to_pylist()[0]
        raw = a.sql(
            "SELECT polarity, token_display, score FROM top_tokens "
            "WHERE direction_id = 2497 ORDER BY rank"
        ).to_pylist()
        assert view["pos_tokens"] == [r["token_display"] for r in raw if r["polarity"] == "pos"]
        np.testing.assert_allclose(
            view["neg_scores"], [r["score"] for r in raw if r["polarity"] == "neg"]
        )
        heads = a.sql(
            "SELECT count(*) AS n, count(DISTINCT top_write_id) AS d FROM head_summary"
        ).to_pylist()[0]
        assert heads == {"n": 72, "d": 72}


HEAVY = ("torch", "transformer_lens", "transformers", "pandas", "sqlalchemy")
# search, trace and a card import none of HEAVY (a fresh process answers in under a second),
# and neither do the query commands nor check (pandas alone is a quarter to half a second)
LIGHT_COMMANDS = [
    ["search", "fire", "-k", "3"],
    ["search", "--direction", "432", "--kind", "ov"],
    ["trace", "432", "--min-cos", "0.2"],
    ["show", "432"],
]
QUERY_COMMANDS = [["sql", "SELECT count(*) FROM directions"], ["models"], ["check"]]


def test_query_commands_do_not_import_torch(minilm_atlas: Path) -> None:
    """One fresh process runs every command in turn, the light ones first, and prints the heavy
    modules loaded after each: what a command imports stays loaded, so each line holds what
    that command and those before it needed."""
    commands = [["--atlas", str(minilm_atlas), *c] for c in LIGHT_COMMANDS + QUERY_COMMANDS]
    code = (
        "import sys\n"
        "from atlas.cli.main import cli\n"
        f"for args in {commands!r}:\n"
        "    cli.main(args, prog_name='svd-atlas', standalone_mode=False)\n"
        f"    print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = [
        ast.literal_eval(line.removeprefix("HEAVY "))
        for line in result.stderr.splitlines()
        if line.startswith("HEAVY ")
    ]
    assert len(loaded) == len(commands)
    assert loaded[-1] == []


def test_search_json_hits_have_the_documented_fields(minilm_atlas: Path) -> None:
    result = run_cli("--atlas", minilm_atlas, "search", "fire", "--format", "json", "-k", "4")
    hits = json.loads(result.stdout)
    assert len(hits) == 4
    for hit in hits:
        assert {
            "direction_id",
            "model_id",
            "layer",
            "head",
            "kind",
            "side",
            "sv_index",
            "sigma",
            "sign",
            "score",
            "tokens",
        } <= set(hit)
        assert hit["sign"] in (1, -1) and isinstance(hit["tokens"], list)


@pytest.mark.parametrize(
    "args, message",
    [
        (["search"], "give exactly one of"),
        (["search", " , "], "empty search text"),
        (["search", "qwxzv"], "no token"),
        (["search", "fire", "-k", "1000000"], "-k"),
        (["search", "--direction", "99999999"], "no direction"),
        (["search", "fire", "--kind", "attn"], "unknown kind"),
        (["search", "fire", "--layer", "a:b"], "bad layer range"),
        (["search", "fire", "--model", "nope"], "no model 'nope'"),
        (["show", "99999999"], "no direction"),
        (["show", "minilm", "9", "0"], "LAYER: 'minilm' has no layer 9 (layers 0 to 5)"),
        (["show", "minilm", "3", "12"], "HEAD: 'minilm' has no head 12 in layer 3 (heads 0 to 11)"),
        (["show", "minilm", "3", "mlp_gate"], "no mlp_gate matrix at layer 3 in 'minilm'"),
        (["show", "minilm", "3", "3", "--offset", "40"], "from sv_index 40 on: the matrix has 32"),
        (["show", "minilm", "3"], "give a direction id, or MODEL LAYER HEAD (see: svd-atlas show"),
        (["serch", "fire"], "No such command 'serch'."),
        (["search", "fire", "--direction", "3"], "give exactly one of"),
        (["trace", "99999999"], "no direction"),
        (["search", "fire", "--atlas", "x"], "--atlas goes before the command: svd-atlas --atlas"),
    ],
)
def test_bad_query_input_is_one_clear_line(minilm_atlas: Path, args, message: str) -> None:
    assert message in assert_one_error_line(run_cli("--atlas", minilm_atlas, *args))


@pytest.mark.parametrize(
    "args",
    [
        ["trace", "432", "--model-id"],  # no such option
        ["serch", "fire"],  # no such command
        ["show"],  # a missing argument
        ["sql", "SELECT 1", "--timeout", "0"],  # a time limit the library refuses
        ["sql", "SELECT 1", "--memory-limit", "lots"],  # a value the library refuses
        ["search", "fire", "--direction", "432"],  # two queries
        ["show", "minilm", "3"],  # neither an id nor MODEL LAYER HEAD
        ["export"],  # neither -o nor --parquet
    ],
)
def test_a_usage_mistake_is_one_line_and_exit_2(minilm_atlas: Path, args: list[str]) -> None:
    """Not click's usage block: the one line says what is wrong and where help is."""
    result = run_cli("--atlas", minilm_atlas, *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr


def test_no_command_shows_the_help_as_click_does() -> None:
    """The help, not one line of it behind "Error:" (click raises it as a usage error)."""
    result = run_cli()
    assert result.returncode == 2 and not result.stderr.startswith("Error")
    assert (
        result.stderr.startswith("Usage: svd-atlas [OPTIONS] COMMAND") and "search" in result.stderr
    )


def test_cards(minilm_atlas: Path) -> None:
    head = run_cli("--atlas", minilm_atlas, "show", "minilm", "3", "3", "--top", "3").stdout
    assert "minilm layer 3 head 3 ov (384x384, rank 32)" in head
    assert head.count("\n") >= 6 and "write +" in head
    card = json.loads(run_cli("--atlas", minilm_atlas, "show", "8724", "--format", "json").stdout)
    with atlas.open(minilm_atlas) as a:
        row = a.sql(
            "SELECT kind, layer, sigma FROM directions WHERE direction_id = 8724"
        ).to_pylist()[0]
        neurons = a.sql(
            "SELECT neuron FROM top_neurons WHERE direction_id = 8724 ORDER BY rank"
        ).to_pydict()["neuron"]
    assert (card["kind"], card["layer"]) == (row["kind"], row["layer"])
    assert [n["neuron"] for n in card["top_neurons"]] == neurons and len(neurons) == 20
    mlp = run_cli("--atlas", minilm_atlas, "show", "minilm", "2", "mlp_in", "--top", "2").stdout
    assert "minilm layer 2 mlp_in (384x1536, rank 384)" in mlp and "read +" in mlp
    text = run_cli("--atlas", minilm_atlas, "show", "8724", "--tokens", "3").stdout.splitlines()
    token_lines = {line.split()[0]: line for line in text if line.startswith(("  + ", "  - "))}
    for sign, polarity in (("+", "pos"), ("-", "neg")):
        shown = [t for t in card["tokens"] if t["polarity"] == polarity][:3]
        expected = ", ".join(f"{t['token_display']} ({t['score']:.3f})" for t in shown)
        assert token_lines[sign] == f"  {sign} {expected}"


@pytest.mark.slow  # four cards and a refusal, in-process: about 3 s
def test_a_heads_qk_card_lists_its_query_and_key_directions(minilm_atlas: Path) -> None:
    """`show MODEL LAYER HEAD --circuit qk`: the QK circuit's directions (a head card showed
    its OV circuit only, and `show minilm 3 qk` was refused), as SQL finds them."""
    args = ["--atlas", minilm_atlas, "show", "minilm", "3", "5", "--top", "3", "--circuit", "qk"]
    card = json.loads(run_cli(*args, "--format", "json").stdout)
    with atlas.open(minilm_atlas) as a:
        rows = a.sql(
            "SELECT d.sv_index, d.side, d.direction_id, d.sigma, t.token_display "
            "FROM directions d JOIN top_tokens t USING (direction_id) WHERE d.kind = 'qk' "
            "AND d.layer = 3 AND d.head = 5 AND d.sv_index < 3 AND t.basis = 'unembed' "
            "AND t.polarity = 'pos' AND t.rank = 0 ORDER BY d.sv_index, d.side"
        ).to_pylist()
        api = a.card("minilm", 3, 5, top=3, circuit="qk")
    assert card["directions"] == api["directions"]
    assert card["kind"] == "qk" and card["sides"] == ["query", "key"]
    for r in rows:
        d = card["directions"][r["sv_index"]]
        assert d[f"{r['side']}_id"] == r["direction_id"] and d["sigma"] == pytest.approx(r["sigma"])
        assert d[f"{r['side']}_pos"][0] == r["token_display"]
    text = run_cli(*args, "--tokens", "2").stdout
    assert "minilm layer 3 head 5 qk (384x384, rank 32)" in text
    header = next(line for line in text.splitlines() if line.startswith("sv "))
    assert header.split() == ["sv", "sigma", "query", "+", "query", "-", "key", "+", "key", "-"]
    refused = assert_one_error_line(
        run_cli("--atlas", minilm_atlas, "show", "minilm", "3", "mlp_in", "--circuit", "qk")
    )
    assert "qk is a head's circuit; an MLP matrix (mlp_in) has none" in refused


def test_a_cards_partner_is_the_other_side_of_its_singular_value(minilm_atlas: Path) -> None:
    """For a direction of every side of OV and QK, and an MLP's: the card's partner is the
    row SQL finds in its matrix at its sv_index, and the card names that row's side."""
    with atlas.open(minilm_atlas) as a:
        picks = a.sql(
            "SELECT kind, side, min(direction_id) + 37 AS d FROM directions "
            "GROUP BY kind, side ORDER BY kind, side"
        ).to_pylist()
        assert {p["side"] for p in picks} >= {"read", "write", "query", "key"}
        for pick in picks:
            card = a.card(pick["d"])
            partner = a.sql(
                "SELECT p.direction_id, p.side FROM directions d JOIN directions p "
                "ON p.matrix_id = d.matrix_id AND p.sv_index = d.sv_index "
                "AND p.direction_id <> d.direction_id WHERE d.direction_id = ?",
                [pick["d"]],
            ).to_pylist()
            if pick["kind"].startswith("mlp"):  # the other side lives in neuron space
                assert partner == [] and card["partner_id"] is card["partner_side"] is None
                continue
            assert (card["partner_id"], card["partner_side"]) == (
                partner[0]["direction_id"], partner[0]["side"],
            )  # fmt: skip
            shown = run_cli("--atlas", minilm_atlas, "show", str(pick["d"])).stdout
            assert f"  partner ({partner[0]['side']} side): {partner[0]['direction_id']}" in shown
        # the partner is read from the hit rows' neighbours: every id agrees with the table,
        # the model's first and last included
        rows = a.sql(
            "SELECT d.direction_id AS d, p.direction_id AS p FROM directions d "
            "LEFT JOIN directions p ON p.matrix_id = d.matrix_id "
            "AND p.sv_index = d.sv_index AND p.direction_id <> d.direction_id"
        ).to_pylist()
        expected = {r["d"]: r["p"] for r in rows}
        ids = sorted(expected)
        sample = [ids[0], ids[-1], *np.random.default_rng(0).choice(ids, 150, replace=False)]
        for d in sample:
            assert a.card(int(d))["partner_id"] == expected[int(d)], d


@pytest.mark.slow  # ingests for it; exact search is the fast tier's test_query_search
def test_small_models_stay_exact_whatever_the_threshold(tmp_path: Path) -> None:
    """Below 1024 directions an approximate index cannot train its codebooks: exact it is."""
    ingest(
        tmp_path / "atlas",
        IngestOptions(model="random:llama-tiny", exact_max=1, max_rank=2),
        log=quiet,
    )
    with atlas.open(tmp_path / "atlas") as a:
        assert a.sql("SELECT index_type FROM models")["index_type"].to_pylist() == ["flat"]
        assert len(a.search(direction=0, k=5)) == 5


@pytest.mark.slow
def test_approximate_index_above_threshold(tmp_path: Path) -> None:
    """A model above --exact-max gets the approximate index; its hits agree with exact ones."""
    loaded = tiny_gpt2()  # one model twice: 1,152 directions a copy
    for name, exact_max in (("exact", 10**9), ("ann", 1000)):
        options = IngestOptions(model=loaded.spec, model_id=name, exact_max=exact_max)
        ingest(tmp_path / "atlas", options, loaded=loaded, log=quiet)
    with atlas.open(tmp_path / "atlas") as a:
        types = a.sql("SELECT model_id, index_type FROM models ORDER BY model_id").to_pylist()
        assert types == [
            {"model_id": "ann", "index_type": "pq-rerank"},
            {"model_id": "exact", "index_type": "flat"},
        ]
        first_ann = a.sql("SELECT min(direction_id) AS m FROM directions WHERE model_id = 'ann'")[
            "m"
        ][0].as_py()
        recall, traced_total = [], 0
        for d in range(3, first_ann, first_ann // 12):  # 12 origins across every kind and layer
            exact = {h.direction_id: h.score for h in a.search(direction=d, model="exact", k=10)}
            ann = {
                h.direction_id - first_ann: h.score
                for h in a.search(direction=d + first_ann, model="ann", k=10)
            }
            shared = set(exact) & set(ann)
            recall.append(len(shared) / 10)
            # candidates are re-ranked with the full vectors: the scores are exact cosines
            assert all(abs(exact[i] - ann[i]) < 1e-5 for i in shared)
            filtered = a.search(direction=d + first_ann, model="ann", k=5, kind="ov", side="write")
            exact_f = a.search(direction=d, model="exact", k=5, kind="ov", side="write")
            assert [h.direction_id - first_ann for h in filtered] == [
                h.direction_id for h in exact_f
            ]
            # tracing is a range search over the full vectors: identical on either index
            traced = {
                (s.hit.direction_id - first_ann, s.hop, s.hit.sign)
                for s in a.trace(d + first_ann, min_cos=0.3, hops=2, same_model=True)
            }
            exact_t = {
                (s.hit.direction_id, s.hop, s.hit.sign)
                for s in a.trace(d, min_cos=0.3, hops=2, same_model=True)
            }
            assert traced == exact_t
            traced_total += len(traced)
    assert np.mean(recall) >= 0.95 and traced_total > 0
    listing = run_cli("--atlas", tmp_path / "atlas", "models").stdout.splitlines()
    assert [line.split()[0] for line in listing if " pq-rerank " in line] == ["ann"]
    assert [line.split()[0] for line in listing if " flat " in line] == ["exact"]
    for model, direction, noted in (("ann", first_ann, True), ("exact", 0, False)):
        cli = run_cli(
            "--atlas", tmp_path / "atlas", "search", "--direction", str(direction), "--model", model
        )
        assert cli.returncode == 0 and ("approximate index" in cli.stderr) == noted, cli.stderr

    # the index type survives a bundle round trip (vectors re-indexed on load) and a repair
    bundle = tmp_path / "ann.svdatlas"
    with atlas.open(tmp_path / "atlas") as a:
        a.export(bundle, ["ann"], vectors="f16")
    load_bundle(tmp_path / "loaded", bundle)
    index_file = next((tmp_path / "loaded" / "store").glob("*/residual-0000.faiss"))
    index_file.unlink()
    assert run_cli("--atlas", tmp_path / "loaded", "check", "--repair").returncode == 0
    report = check_atlas(tmp_path / "loaded")
    assert not report.errors
    # check measures the approximate index's recall; the same figure from a numpy scan
    (line,) = [f.message for f in report.findings if "recall@10" in f.message]
    reported = float(line.split("recall@10 ")[1].split()[0])
    with atlas.open(tmp_path / "loaded") as a:
        rows = a.sql("SELECT direction_id, vector FROM directions ORDER BY direction_id")
        ids = rows["direction_id"].to_numpy()
        vectors = np.array(rows["vector"].to_pylist(), np.float32)
        picks = np.random.default_rng(0).choice(len(ids), 200, replace=False)
        hits = []
        for p in picks:
            cos = np.abs(vectors @ vectors[p])
            cos[p] = -1
            truth = set(ids[np.argsort(-cos, kind="stable")[:10]].tolist())
            found = a.search(direction=int(ids[p]), k=10)
            hits.append(len(truth & {h.direction_id for h in found}) / 10)
    assert reported == pytest.approx(np.mean(hits), abs=1e-3) and reported >= 0.95
    with atlas.open(tmp_path / "loaded") as a:
        assert not is_exact(a.residual_index("ann"))
