"""The FAISS Hamming index against a NumPy Hamming ranking (harr_tf.retrieval)."""

import json

import numpy as np
import pytest

from harr_tf.index import HammingIndex, default_nlist, ids_path
from harr_tf.retrieval import hamming_distances


def random_codes(count: int, bits: int, seed: int) -> np.ndarray:
    """±1 int8 codes (count, bits); few bits, so that many distances tie."""
    return np.where(np.random.default_rng(seed).random((count, bits)) < 0.5, -1, 1).astype(np.int8)


def pack(codes: np.ndarray) -> np.ndarray:
    return np.packbits(codes > 0, axis=1)


def assert_exact_top_k(distances, positions, queries, database, k):
    """Distances equal the NumPy ranking's; ids strictly inside the k-th distance are the
    NumPy ranking's (ties broken by position); ids at it are ones that tie there."""
    reference = hamming_distances(queries, database)
    order = np.lexsort((np.arange(len(database))[None].repeat(len(queries), 0), reference))
    for row in range(len(queries)):
        expected = order[row, :k]
        np.testing.assert_array_equal(distances[row], reference[row, expected])
        np.testing.assert_array_equal(reference[row, positions[row]], distances[row])
        assert len(set(positions[row].tolist())) == k
        inside = distances[row] < distances[row, -1]
        np.testing.assert_array_equal(positions[row, inside], expected[inside])
        assert np.all(np.diff(positions[row, ~inside]) > 0)  # ties come out by position


@pytest.mark.parametrize(("bits", "k"), [(16, 10), (64, 10), (16, 300)])
def test_flat_index_ranks_as_numpy_hamming_distances(bits, k):
    database, queries = random_codes(300, bits, 0), random_codes(25, bits, 1)
    index = HammingIndex.build(pack(database), [f"item{i}" for i in range(300)])
    distances, positions = index.search(pack(queries), k)
    assert distances.shape == positions.shape == (25, k)
    assert_exact_top_k(distances, positions, queries, database, k)


def test_search_clips_k_to_the_index_size():
    database = random_codes(7, 16, 0)
    distances, positions = HammingIndex.build(pack(database), list("abcdefg")).search(
        pack(database[:2]), k=50
    )
    assert distances.shape == (2, 7)
    assert sorted(positions[0].tolist()) == list(range(7))


def test_ivf_index_probing_every_cell_is_exact_and_fewer_cells_give_true_distances():
    database, queries = random_codes(2000, 32, 2), random_codes(30, 32, 3)
    index = HammingIndex.build(pack(database), [str(i) for i in range(2000)], "ivf", nlist=16)
    assert index.index.nlist == 16 and index.index.nprobe == 1
    distances, positions = index.search(pack(queries), 10, nprobe=16)
    assert_exact_top_k(distances, positions, queries, database, 10)
    assert index.index.nprobe == 1  # the override holds for that search only

    distances, positions = index.search(pack(queries), 10)
    reference = hamming_distances(queries, database)
    found = positions >= 0  # one cell of ~125 codes may hold fewer than 10 near ones
    assert found[:, 0].all()
    np.testing.assert_array_equal(
        reference[np.nonzero(found)[0], positions[found]], distances[found]
    )
    # An approximate i-th neighbour is never nearer than the exact i-th.
    assert np.all(distances[found] >= np.sort(reference, axis=1)[:, :10][found])


def test_default_nlist_keeps_enough_training_points():
    assert default_nlist(10) == 1
    assert default_nlist(10_000) == 100
    assert default_nlist(1_000_000) == 1000


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_and_load_round_trip(tmp_path, kind):
    database = random_codes(500, 24, 4)
    ids = [f"photos/{i:03d}.jpg" for i in range(500)]
    options = {"nlist": 8, "nprobe": 3} if kind == "ivf" else {}
    index = HammingIndex.build(pack(database), ids, kind, **options)
    path = tmp_path / "harr.faiss"
    index.save(path)
    loaded = HammingIndex.load(path)
    assert (loaded.kind, loaded.ids, loaded.bits, len(loaded)) == (kind, ids, 24, 500)
    if kind == "ivf":
        assert loaded.index.nprobe == 3
    queries = pack(database[:20])
    for got, want in zip(loaded.search(queries, 5), index.search(queries, 5), strict=True):
        np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["harr.faiss", "harr.faiss.ids.json"]


def test_load_rejects_an_index_and_ids_of_different_builds(tmp_path):
    path = tmp_path / "harr.faiss"
    HammingIndex.build(pack(random_codes(10, 16, 0)), [str(i) for i in range(10)]).save(path)
    ids_path(path).write_text(json.dumps({"kind": "flat", "ids": ["a", "b"]}))
    with pytest.raises(ValueError, match="holds 10 codes but .* names 2"):
        HammingIndex.load(path)
    ids_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="ids.json"):
        HammingIndex.load(path)
    (tmp_path / "other.faiss").write_bytes(b"not an index")
    ids_path(tmp_path / "other.faiss").write_text(json.dumps({"kind": "flat", "ids": []}))
    with pytest.raises(ValueError, match="not a FAISS binary index"):
        HammingIndex.load(tmp_path / "other.faiss")


def test_bad_input_is_rejected_with_what_was_received():
    packed = pack(random_codes(20, 16, 0))
    ids = [str(i) for i in range(20)]
    with pytest.raises(ValueError, match="uint8 of shape"):
        HammingIndex.build(packed.astype(np.int32), ids)
    with pytest.raises(ValueError, match="one id per code"):
        HammingIndex.build(packed, ids[:-1])
    with pytest.raises(ValueError, match="kind"):
        HammingIndex.build(packed, ids, "hnsw")
    with pytest.raises(ValueError, match="apply to kind='ivf'"):
        HammingIndex.build(packed, ids, nlist=4)
    with pytest.raises(ValueError, match="between 1 and the number of codes"):
        HammingIndex.build(packed, ids, "ivf", nlist=21)
    index = HammingIndex.build(packed, ids)
    with pytest.raises(ValueError, match="Queries have 32 bits but the index holds 16"):
        index.search(pack(random_codes(2, 32, 1)))
    with pytest.raises(ValueError, match="k"):
        index.search(packed, k=0)
    with pytest.raises(ValueError, match="nprobe"):
        index.search(packed, nprobe=2)
