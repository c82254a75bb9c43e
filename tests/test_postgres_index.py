"""The PostgreSQL index against a real server (tests/postgres_server.py) and FAISS flat."""

import numpy as np
import psycopg
import pytest

from harr_tf.index import HammingIndex
from harr_tf.postgres_index import PostgresIndex, open_index


def random_codes(count, bits=16, seed=0):
    """Short codes, so equal distances are common and their order is tested."""
    return np.packbits(np.random.default_rng(seed).integers(0, 2, (count, bits)), axis=1)


def rows(postgres, table, database="postgres"):
    with psycopg.connect(
        host=str(postgres.socket_dir), port=postgres.port, user="postgres", dbname=database
    ) as connection:
        return connection.execute(f'SELECT * FROM "{table}" ORDER BY seq').fetchall()


@pytest.fixture
def table(postgres, request):
    return request.node.name[:40].lower()


def test_ranking_add_and_remove_equal_faiss_flat(postgres, table):
    packed, queries = random_codes(600), random_codes(30, seed=1)
    ids = [f"item{i}" for i in range(600)]
    uri = postgres.uri(table=table)
    faiss_index = HammingIndex.build(packed[:400], ids[:400])
    PostgresIndex.build(packed[:400], ids[:400]).save(uri)
    index = open_index(uri)
    assert isinstance(index, PostgresIndex) and (index.bits, index.kind, len(index)) == (
        16,
        "flat",
        400,
    )
    for step in (lambda i: i.add(packed[400:], ids[400:]), lambda i: i.remove(ids[10:300:3])):
        step(faiss_index)
        step(index)
        for k in (1, 25, 1000):
            expected = faiss_index.search(queries, k)
            found = index.search(queries, k)
            np.testing.assert_array_equal(found[0], expected[0])
            np.testing.assert_array_equal(found[1], expected[1])  # ties by insertion order
        assert index.ids == faiss_index.ids
    np.testing.assert_array_equal(index.codes([5, 0, 77]), faiss_index.codes([5, 0, 77]))
    np.testing.assert_array_equal(open_index(uri).codes(), faiss_index.codes())


@pytest.mark.parametrize("kind, option", [("hnsw", "ef_search"), ("ivf", "nprobe")])
def test_approximate_kinds_find_the_exact_neighbours_with_a_wide_search(
    postgres, table, kind, option
):
    packed, queries = random_codes(2000, bits=64), random_codes(20, bits=64, seed=1)
    ids = [str(i) for i in range(2000)]
    PostgresIndex.build(packed, ids, kind).save(postgres.uri(table=table))
    index = open_index(postgres.uri(table=table))
    assert index.kind == kind and index.exact_radius is None
    exact = HammingIndex.build(packed, ids).search(queries, 10)[0]
    wide = {"ef_search": 400, "nprobe": 1000}[option]  # nprobe: every cell
    distances, positions = index.search(queries, 10, **{option: wide})
    np.testing.assert_array_equal(distances, exact)  # the same distances; ties in any order
    for query, row in enumerate(positions):
        expected = np.unpackbits(packed[row] ^ queries[query], axis=1).sum(axis=1)
        np.testing.assert_array_equal(expected, distances[query])
    with pytest.raises(ValueError, match="`nflip` does not apply to a '" + kind):
        index.search(queries, 10, nflip=1)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_filters_rank_only_matching_rows(postgres, table, kind):
    packed, queries = random_codes(300), random_codes(5, seed=2)
    ids = [f"p{i}" for i in range(300)]
    shops = [["north", "south", "east"][i % 3] for i in range(300)]
    kinds = ["shoe" if i % 2 else None for i in range(300)]
    uri = postgres.uri(table=table)
    PostgresIndex.build(packed, ids, kind, metadata={"shop": shops, "kind": kinds}).save(uri)
    index = open_index(uri)
    keep = [i for i in range(300) if shops[i] == "south" and kinds[i] == "shoe"]
    subset = HammingIndex.build(packed[keep], [ids[i] for i in keep])
    wide = {"ef_search": 400} if kind == "hnsw" else {}  # pgvector walks on past the filter
    distances, positions = index.search(
        queries, 10, filters={"shop": "south", "kind": "shoe"}, **wide
    )
    expected_distances, expected_positions = subset.search(queries, 10)
    np.testing.assert_array_equal(distances, expected_distances)
    assert all(shops[p] == "south" and kinds[p] == "shoe" for p in positions.ravel())
    if kind == "flat":  # exact: the same ids in the same order
        assert [[index.ids[p] for p in row] for row in positions] == [
            [subset.ids[p] for p in row] for row in expected_positions
        ]
    distances, positions = index.search(queries, 10, filters={"shop": "nowhere"})
    assert (positions == -1).all()
    with pytest.raises(ValueError, match="No metadata column 'colour'.*'shop', 'kind'"):
        index.search(queries, 10, filters={"colour": "red"})


def test_ids_and_metadata_are_stored_verbatim(postgres, table):
    awkward = ["it's", 'say "hi"; DROP TABLE x; --', "日本/写真 🐱.png", "back\\slash\ttab", "%s"]
    packed = random_codes(len(awkward))
    uri = postgres.uri(table=table)
    PostgresIndex.build(packed, awkward, metadata={"shop; drop": awkward[::-1]}).save(uri)
    stored = rows(postgres, table)
    assert [row[0] for row in stored] == awkward
    assert [row[-1] for row in stored] == awkward[::-1]
    index = open_index(uri)
    found = index.search(packed, 1, filters={"shop; drop": awkward[-1]})[1][:, 0]
    assert index.ids[found[0]] == awkward[0]
    index.remove([awkward[1]])
    assert index.ids == awkward[:1] + awkward[2:]


def test_bad_locations_fail_in_one_line(postgres, table):
    uri = postgres.uri(table=table)
    PostgresIndex.build(random_codes(5), list("abcde")).save(uri)
    before = rows(postgres, table)
    tcp = postgres.uri(table=table, tcp=True)
    assert len(open_index(tcp)) == 5  # the password over TCP
    cases = {
        tcp.replace("s3cret", "wrong"): 'password authentication failed for user "postgres"',
        postgres.uri("nope", table): 'database "nope" does not exist',
        uri + "&sslmode=bogus": "invalid sslmode value",
        uri.replace("table=", "colour=red&table="): 'invalid URI query parameter: "colour"',
        "postgresql://postgres@/postgres?host=/nonexistent&table=x": "No such file or directory",
    }
    for location, message in cases.items():
        with pytest.raises(ConnectionError, match=message) as error:
            open_index(location)
        assert "\n" not in str(error.value) and "wrong" not in str(error.value)
    with pytest.raises(ValueError, match="expected a table name of 1 to 63 bytes"):
        open_index(uri.replace(f"table={table}", "table=" + "x" * 64))
    with pytest.raises(FileNotFoundError, match="No table missing_table in"):
        open_index(postgres.uri(table="missing_table"))
    assert rows(postgres, table) == before


def test_tables_that_are_not_ours_and_other_lengths_are_refused(postgres, table):
    postgres.execute(f'CREATE TABLE "{table}" (id text, code bit(16), price numeric)')
    postgres.execute(f"INSERT INTO \"{table}\" VALUES ('x', B'0000000000000000', 1.5)")
    uri = postgres.uri(table=table)
    with pytest.raises(
        ValueError,
        match=r"exists with other columns \(id text, code bit\(16\), "
        "price numeric\\): it is not a table of codes",
    ):
        PostgresIndex.build(random_codes(3), list("abc")).save(uri)
    with pytest.raises(ValueError, match="exists with other columns"):
        open_index(uri)
    assert rows_unordered(postgres, table) == [("x", "0000000000000000", 1.5)]

    ours = postgres.uri(table=table + "_16")
    PostgresIndex.build(random_codes(3), list("abc")).save(ours)
    index = open_index(ours)
    with pytest.raises(ValueError, match="Codes of 64 bits but the index holds 16-bit codes"):
        index.add(random_codes(2, bits=64), ["d", "e"])
    with pytest.raises(ValueError, match="holds 16-bit codes, not 64-bit ones"):
        PostgresIndex.open_for_writing(ours, 64)
    with pytest.raises(ValueError, match=r"1 of the ids are already in the index, e.g. \['c'\]"):
        index.add(random_codes(2), ["c", "d"])
    with pytest.raises(ValueError, match=r"1 ids are not in the index, e.g. \['z'\]"):
        index.remove(["a", "z"])
    with pytest.raises(ValueError, match="Cannot remove every code"):
        index.remove(["a", "b", "c"])
    assert open_index(ours).ids == list("abc")


def rows_unordered(postgres, table):
    import decimal

    with psycopg.connect(
        host=str(postgres.socket_dir), port=postgres.port, user="postgres", dbname="postgres"
    ) as connection:
        found = connection.execute(f'SELECT * FROM "{table}"').fetchall()
    return [tuple(float(v) if isinstance(v, decimal.Decimal) else v for v in row) for row in found]


def test_missing_extension_and_empty_table(postgres, table):
    postgres.execute("CREATE ROLE plain LOGIN")
    postgres.execute("CREATE DATABASE novector")
    postgres.execute("GRANT CREATE ON SCHEMA public TO plain", database="novector")
    uri = postgres.uri("novector", "codes", user="plain")
    with pytest.raises(
        ValueError,
        match="lacks the pgvector extension.*permission denied.*run CREATE EXTENSION vector",
    ):
        PostgresIndex.build(random_codes(3), list("abc")).save(uri)
    with pytest.raises(FileNotFoundError):
        open_index(uri)  # nothing was created

    empty = PostgresIndex.open_for_writing(postgres.uri(table=table), 16)
    assert len(empty) == 0
    with pytest.raises(ValueError, match="holds no codes yet"):
        empty.search(random_codes(1), 5)


def test_the_commands_stop_in_one_line_without_showing_the_password(postgres, table, tmp_path):
    from serving.search import main as search_main

    codes = np.ones((3, 16), np.int8)
    path = str(tmp_path / "codes.npz")
    np.savez(path, ids=["a", "b", "c"], codes=codes, packed=np.packbits(codes > 0, axis=1))
    uri = postgres.uri(table=table)
    assert search_main(["build", "--codes", path, "--index", uri]) == 0
    wrong = postgres.uri(table=table, tcp=True).replace("s3cret", "wrong")
    cases = {
        ("remove", "--index", wrong, "--ids", "a"): "password authentication failed",
        ("remove", "--index", uri, "--ids", "z"): r"1 ids are not in the index, e.g. \['z'\]",
        ("add", "--index", uri, "--codes", path): "3 of the ids are already in the index",
        ("build", "--codes", path, "--index", uri, "--kind", "multihash"): "must be one of",
    }
    for arguments, message in cases.items():
        with pytest.raises(SystemExit, match=message) as stop:
            search_main(list(arguments))
        assert "\n" not in str(stop.value) and "wrong" not in str(stop.value)
    assert open_index(uri).ids == ["a", "b", "c"]
