"""`python -m serving.search build|query`: an index of codes from `serving.encode`, queried
through a real `serving.server` process."""

import json

import numpy as np
import pytest
from serving_support import encoded_images, sample_images

from harr_tf.index import HammingIndex
from harr_tf.retrieval import hamming_distances
from serving.encode import main as encode_main
from serving.search import main as search_main

COUNT = 30


@pytest.fixture(scope="module")
def encoded_folder(grpc_server, tmp_path_factory):
    """Yields (folder of 30 PNG files, codes.npz of them written by serving.encode)."""
    folder = tmp_path_factory.mktemp("search") / "images"
    folder.mkdir()
    for index, contents in enumerate(encoded_images(sample_images(COUNT, seed=7))):
        (folder / f"{index:02d}.png").write_bytes(contents)
    codes = folder.parent / "codes.npz"
    assert encode_main(["--server", grpc_server, "--input", str(folder), "--out", str(codes)]) == 0
    return folder, codes


def stored_codes(path):
    with np.load(path) as archive:
        return archive["ids"].tolist(), archive["codes"]


BUILD_OPTIONS = {
    "flat": [],
    "ivf": ["--nlist", "2", "--nprobe", "2"],
    "hnsw": ["--ef-search", "64"],
    "multihash": ["--nhash", "2", "--nflip", "8"],  # exact within 2·9 − 1 = 17 ≥ 16 bits
}


@pytest.mark.parametrize("kind", sorted(BUILD_OPTIONS))
def test_build_indexes_every_code_under_its_id(encoded_folder, tmp_path, kind, capsys):
    _, codes_file = encoded_folder
    options = BUILD_OPTIONS[kind]
    index_file = tmp_path / "harr.faiss"
    command = ["build", "--codes", str(codes_file), "--index", str(index_file), "--kind", kind]
    assert search_main([*command, *options]) == 0
    assert f"Indexed {COUNT} 16-bit codes ({kind})" in capsys.readouterr().out
    index = HammingIndex.load(index_file)
    ids, codes = stored_codes(codes_file)
    assert (index.kind, index.ids, index.bits) == (kind, ids, 16)
    distances, _ = index.search(np.packbits(codes > 0, axis=1), k=COUNT)
    expected = np.sort(hamming_distances(codes, codes), axis=1)
    np.testing.assert_array_equal(distances, expected)  # every cell, every node: exact


def test_query_prints_nearest_ids_with_hamming_distances(
    grpc_server, encoded_folder, tmp_path, capsys
):
    folder, codes_file = encoded_folder
    index_file = tmp_path / "harr.faiss"
    search_main(["build", "--codes", str(codes_file), "--index", str(index_file)])
    ids, codes = stored_codes(codes_file)
    queries = ["03.png", "17.png", "29.png"]
    command = ["query", "--index", str(index_file), "--server", grpc_server, "--top-k", "5"]
    capsys.readouterr()
    assert search_main([*command, "--json", *(str(folder / name) for name in queries)]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [answer["query"] for answer in answers] == [str(folder / name) for name in queries]
    for name, answer in zip(queries, answers, strict=True):
        truth = hamming_distances(codes[[ids.index(name)]], codes)[0]
        distances = [result["distance"] for result in answer["results"]]
        assert distances == np.sort(truth)[:5].tolist()
        assert all(truth[ids.index(r["id"])] == r["distance"] for r in answer["results"])
        assert name in [r["id"] for r in answer["results"] if r["distance"] == 0]

    assert search_main([*command, str(folder / queries[0])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(folder / queries[0])
    rank, distance, item = lines[1].split()
    first = answers[0]["results"][0]
    assert (int(rank), int(distance), item) == (1, first["distance"], first["id"])
    assert len(lines) == 6


def test_query_names_images_it_cannot_read_or_decode(grpc_server, encoded_folder, tmp_path, capsys):
    folder, codes_file = encoded_folder
    index_file = tmp_path / "harr.faiss"
    search_main(["build", "--codes", str(codes_file), "--index", str(index_file)])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    images = [str(folder / "05.png"), str(tmp_path / "bad.jpg"), str(tmp_path / "gone.png")]
    capsys.readouterr()
    command = ["query", "--index", str(index_file), "--server", grpc_server, "--json"]
    assert search_main([*command, *images]) == 1
    captured = capsys.readouterr()
    answers = json.loads(captured.out)
    assert [answer["query"] for answer in answers] == images
    assert len(answers[0]["results"]) == 10
    assert "JPEG" in answers[1]["error"] and "cannot read the file" in answers[2]["error"]
    assert f"error: {images[1]}" in captured.err and f"error: {images[2]}" in captured.err


def test_query_refuses_an_index_of_another_code_length(grpc_server, tmp_path):
    codes = np.where(np.random.default_rng(0).random((10, 32)) < 0.5, -1, 1).astype(np.int8)
    ids = [str(index) for index in range(10)]
    np.savez(tmp_path / "codes.npz", ids=ids, codes=codes, packed=np.packbits(codes > 0, axis=1))
    index_file = str(tmp_path / "harr.faiss")
    assert (
        search_main(["build", "--codes", str(tmp_path / "codes.npz"), "--index", index_file]) == 0
    )
    (tmp_path / "q.png").write_bytes(encoded_images(sample_images(1))[0])
    with pytest.raises(SystemExit, match="gives 16-bit codes but .* holds 32-bit codes"):
        search_main(
            ["query", "--index", index_file, "--server", grpc_server, str(tmp_path / "q.png")]
        )


def test_build_errors_name_the_input(tmp_path):
    np.savez(tmp_path / "images.npz", images=np.zeros((2, 4, 4), np.uint8))
    index_file = str(tmp_path / "harr.faiss")
    with pytest.raises(SystemExit, match=r"has no \['ids', 'codes', 'packed'\]"):
        search_main(["build", "--codes", str(tmp_path / "images.npz"), "--index", index_file])
    with pytest.raises(SystemExit, match="not a readable codes file"):
        search_main(["build", "--codes", str(tmp_path / "none.npz"), "--index", index_file])
    with pytest.raises(SystemExit, match="No index file"):
        search_main(["query", "--index", index_file, "--server", "127.0.0.1:1", "x.png"])

    def build_from(**arrays):
        np.savez(tmp_path / "bad.npz", **{"ids": np.array(["a", "b"]), **arrays})
        search_main(["build", "--codes", str(tmp_path / "bad.npz"), "--index", index_file])

    twenty = np.ones((2, 20), np.int8)  # 20 bits cannot be packed into whole bytes
    with pytest.raises(SystemExit, match=r"codes has 20 columns but packed has 3 bytes \(24 bits"):
        build_from(codes=twenty, packed=np.packbits(twenty > 0, axis=1))
    codes = np.array([[1, -1] * 8, [-1, 1] * 8], np.int8)
    with pytest.raises(SystemExit, match=r"packed is not the codes packed .* 1 rows, e.g. \['b'\]"):
        build_from(codes=codes, packed=np.packbits(codes[[0, 0]] > 0, axis=1))
    with pytest.raises(SystemExit, match=r"codes must be -1 or \+1"):
        build_from(codes=codes * 2, packed=np.packbits(codes > 0, axis=1))
    objects = np.array([np.ones(16), np.ones(8)], dtype=object)
    with pytest.raises(SystemExit, match=r"bad.npz is not a readable codes file: Object arrays"):
        build_from(codes=objects, packed=np.packbits(codes > 0, axis=1))
    assert not (tmp_path / "harr.faiss").exists()


def test_query_rerank_orders_the_hamming_top_n_by_the_continuous_code(
    grpc_server, encoded_folder, tmp_path, capsys
):
    from serving.client import ServingClient

    folder, codes_file = encoded_folder
    index_file = tmp_path / "harr.faiss"
    search_main(["build", "--codes", str(codes_file), "--index", str(index_file)])
    ids, codes = stored_codes(codes_file)
    query = folder / "11.png"
    with ServingClient(grpc_server) as client:
        h = client.encode([query.read_bytes()], continuous=True).continuous[0]
    command = ["query", "--index", str(index_file), "--server", grpc_server, "--json"]
    capsys.readouterr()
    # N = the whole collection: the re-ranked list is the full asymmetric ranking.
    assert search_main([*command, "--top-k", "6", "--rerank", str(COUNT), str(query)]) == 0
    results = json.loads(capsys.readouterr().out)[0]["results"]
    scores = codes.astype(np.float64) @ h
    expected = np.lexsort((np.arange(COUNT), -scores))[:6]
    assert [r["id"] for r in results] == [ids[i] for i in expected]
    np.testing.assert_allclose([r["score"] for r in results], scores[expected], rtol=1e-5)
    truth = hamming_distances(codes[[ids.index("11.png")]], codes)[0]
    assert [r["distance"] for r in results] == truth[expected].tolist()
    # N = 8: only the 8 nearest by Hamming distance are candidates.
    assert search_main([*command, "--top-k", "3", "--rerank", "8", str(query)]) == 0
    results = json.loads(capsys.readouterr().out)[0]["results"]
    hamming_top = np.lexsort((np.arange(COUNT), truth))[:8]
    expected = hamming_top[np.lexsort((hamming_top, -scores[hamming_top]))][:3]
    assert [r["id"] for r in results] == [ids[i] for i in expected]
    with pytest.raises(SystemExit, match="--rerank 2 must be at least --top-k 3"):
        search_main([*command, "--top-k", "3", "--rerank", "2", str(query)])


def write_codes(path, ids, codes):
    np.savez(path, ids=np.array(ids), codes=codes, packed=np.packbits(codes > 0, axis=1))


def index_files(index_file):
    return index_file.read_bytes()  # the index and its ids: one file


def test_encode_resume_output_feeds_add_new_only(grpc_server, encoded_folder, tmp_path, capsys):
    folder, full_codes = encoded_folder
    grown = tmp_path / "images"
    grown.mkdir()
    for name in sorted(p.name for p in folder.iterdir())[:20]:
        (grown / name).write_bytes((folder / name).read_bytes())
    codes_file, index_file = tmp_path / "codes.npz", tmp_path / "harr.faiss"
    endpoint = ["--server", grpc_server, "--input", str(grown), "--out", str(codes_file)]
    assert encode_main(endpoint) == 0
    assert search_main(["build", "--codes", str(codes_file), "--index", str(index_file)]) == 0
    for name in sorted(p.name for p in folder.iterdir())[20:]:  # the collection grows
        (grown / name).write_bytes((folder / name).read_bytes())
    assert encode_main([*endpoint, "--resume"]) == 0
    before = index_files(index_file)
    add = ["add", "--index", str(index_file), "--codes", str(codes_file)]
    with pytest.raises(SystemExit, match="20 of the ids are already in the index.*--new-only"):
        search_main(add)
    assert index_files(index_file) == before
    capsys.readouterr()
    assert search_main([*add, "--new-only"]) == 0
    assert "Added 10 codes (20 already indexed)" in capsys.readouterr().out
    index = HammingIndex.load(index_file)
    ids, codes = stored_codes(full_codes)
    assert sorted(index.ids) == sorted(ids)
    order = [ids.index(item) for item in index.ids]
    np.testing.assert_array_equal(index.codes(), np.packbits(codes[order] > 0, axis=1))


def test_add_and_remove_refuse_bad_input_and_lose_nothing(encoded_folder, tmp_path, capsys):
    _, codes_file = encoded_folder
    index_file = tmp_path / "harr.faiss"
    search_main(["build", "--codes", str(codes_file), "--index", str(index_file)])
    ids, codes = stored_codes(codes_file)
    before = index_files(index_file)
    other_model = tmp_path / "other.npz"
    write_codes(other_model, ids[:3] + ["new.png"], -codes[:4])
    with pytest.raises(SystemExit, match="3 ids already in .* have other codes there"):
        search_main(["add", "--index", str(index_file), "--codes", str(other_model), "--new-only"])
    longer = tmp_path / "longer.npz"
    write_codes(longer, ["new.png"], np.ones((1, 32), np.int8))
    with pytest.raises(SystemExit, match="Codes of 32 bits but the index holds 16-bit"):
        search_main(["add", "--index", str(index_file), "--codes", str(longer)])
    with pytest.raises(SystemExit, match=r"1 ids are not in the index.*'gone.png'"):
        search_main(["remove", "--index", str(index_file), "--ids", ids[0], "gone.png"])
    assert index_files(index_file) == before

    capsys.readouterr()
    assert search_main(["remove", "--index", str(index_file), "--ids", ids[0], ids[5]]) == 0
    assert f"Removed 2 codes from {index_file}, which holds {COUNT - 2}" in capsys.readouterr().out
    index = HammingIndex.load(index_file)
    assert index.ids == [item for item in ids if item not in (ids[0], ids[5])]
    write_codes(tmp_path / "back.npz", [ids[5]], codes[[5]])
    assert (
        search_main(["add", "--index", str(index_file), "--codes", str(tmp_path / "back.npz")]) == 0
    )
    assert HammingIndex.load(index_file).ids[-1] == ids[5]
