"""The FAISS Hamming index against a NumPy Hamming ranking (harr_tf.retrieval)."""

import numpy as np
import pytest

from harr_tf.faiss_index_kinds import default_nlist
from harr_tf.index import HammingIndex
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


ROUND_TRIP_OPTIONS = {
    "flat": {},
    "ivf": {"nlist": 8, "nprobe": 3},
    "hnsw": {"neighbours": 8, "ef_search": 40},
    "multihash": {"nhash": 3, "nflip": 2},
}


@pytest.mark.parametrize("kind", sorted(ROUND_TRIP_OPTIONS))
def test_save_and_load_round_trip(tmp_path, kind):
    database = random_codes(500, 24, 4)
    ids = [f"photos/{i:03d}.jpg" for i in range(500)]
    index = HammingIndex.build(pack(database), ids, kind, **ROUND_TRIP_OPTIONS[kind])
    path = tmp_path / "harr.faiss"
    index.save(path)
    loaded = HammingIndex.load(path)
    assert (loaded.kind, loaded.ids, loaded.bits, len(loaded)) == (kind, ids, 24, 500)
    if kind != "flat":  # the search option is saved with the index
        assert loaded.search_option == list(ROUND_TRIP_OPTIONS[kind].values())[-1]
    queries = pack(database[:20])
    for got, want in zip(loaded.search(queries, 5), index.search(queries, 5), strict=True):
        np.testing.assert_array_equal(got, want)
    # One file (and the writers' lock file): see tests/test_index_file.py.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["harr.faiss", "harr.faiss.lock"]


def test_bad_input_is_rejected_with_what_was_received():
    packed = pack(random_codes(20, 16, 0))
    ids = [str(i) for i in range(20)]
    with pytest.raises(ValueError, match="uint8 of shape"):
        HammingIndex.build(packed.astype(np.int32), ids)
    with pytest.raises(ValueError, match="one id per code"):
        HammingIndex.build(packed, ids[:-1])
    with pytest.raises(ValueError, match="kind"):
        HammingIndex.build(packed, ids, "lsh")
    with pytest.raises(ValueError, match="applies to kind='ivf'"):
        HammingIndex.build(packed, ids, nlist=4)
    with pytest.raises(ValueError, match="applies to kind='hnsw'"):
        HammingIndex.build(packed, ids, "multihash", ef_search=4)
    with pytest.raises(ValueError, match="unique"):
        HammingIndex.build(packed, ["a"] * 20)
    with pytest.raises(ValueError, match="between 1 and 16 for 16-bit codes. Received: 17"):
        HammingIndex.build(packed, ids, "multihash", nhash=17)
    wide = pack(random_codes(20, 128, 0))
    with pytest.raises(ValueError, match="between 2 and 128 for 128-bit codes. Received: 1"):
        HammingIndex.build(wide, ids, "multihash", nhash=1)
    with pytest.raises(ValueError, match="between 1 and the number of codes"):
        HammingIndex.build(packed, ids, "ivf", nlist=21)
    index = HammingIndex.build(packed, ids)
    with pytest.raises(ValueError, match="Codes of 32 bits but the index holds 16"):
        index.search(pack(random_codes(2, 32, 1)))
    with pytest.raises(ValueError, match="k"):
        index.search(packed, k=0)
    with pytest.raises(ValueError, match="nprobe"):
        index.search(packed, nprobe=2)
    with pytest.raises(ValueError, match="ef_search"):
        index.search(packed, ef_search=2)


def near_duplicates(bases: int, copies: int, bits: int, flips: int, seed: int) -> np.ndarray:
    """`copies` codes around each of `bases` random codes, each with up to `flips` bits
    flipped: neighbours at small distances, as trained codes have."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(random_codes(bases, bits, seed), copies, axis=0)
    for row in codes:
        row[rng.choice(bits, rng.integers(0, flips + 1), replace=False)] *= -1
    return codes


@pytest.mark.parametrize(("nhash", "nflip"), [(4, 0), (2, 1), (4, 1)])
def test_multihash_finds_every_code_within_its_exact_radius(nhash, nflip):
    database = near_duplicates(40, 25, 32, 6, seed=5)
    queries = near_duplicates(10, 1, 32, 0, seed=5)  # the first bases themselves
    index = HammingIndex.build(
        pack(database), [str(i) for i in range(1000)], "multihash", nhash=nhash, nflip=nflip
    )
    radius = index.exact_radius
    assert radius == nhash * (nflip + 1) - 1
    distances, positions = index.search(pack(queries), k=1000)
    reference = hamming_distances(queries, database)
    for row in range(len(queries)):
        found = positions[row] >= 0
        np.testing.assert_array_equal(reference[row, positions[row, found]], distances[row, found])
        within = set(np.flatnonzero(reference[row] <= radius).tolist())
        assert within == set(positions[row, found & (distances[row] <= radius)].tolist())
        assert within  # the test means something: near codes exist
    # Up to the radius, the top k is the exact top k.
    exact_d, _ = HammingIndex.build(pack(database), [str(i) for i in range(1000)]).search(
        pack(queries), 5
    )
    got_d, _ = index.search(pack(queries), 5)
    inside = exact_d <= radius
    np.testing.assert_array_equal(got_d[inside], exact_d[inside])


def test_hnsw_returns_true_distances_and_recalls_near_codes():
    database = near_duplicates(50, 40, 64, 8, seed=6)
    queries = near_duplicates(30, 1, 64, 2, seed=6)
    index = HammingIndex.build(pack(database), [str(i) for i in range(2000)], "hnsw")
    distances, positions = index.search(pack(queries), 10)
    reference = hamming_distances(queries, database)
    assert (positions >= 0).all()
    np.testing.assert_array_equal(np.take_along_axis(reference, positions, axis=1), distances)
    exact = np.sort(reference, axis=1)[:, :10]
    assert np.all(distances >= exact)  # never nearer than the exact i-th neighbour
    assert np.mean(distances == exact) > 0.9


@pytest.mark.parametrize("kind", sorted(ROUND_TRIP_OPTIONS))
def test_add_and_remove_search_as_a_fresh_build_of_the_same_codes(kind):
    codes = near_duplicates(30, 20, 24, 3, seed=7)
    ids = [f"item{i}" for i in range(600)]
    options = {"nlist": 4, "nprobe": 4} if kind == "ivf" else {}
    index = HammingIndex.build(pack(codes[:400]), ids[:400], kind, **options)
    index.add(pack(codes[400:]), ids[400:])
    gone = ["item0", "item17", "item450", "item599"]
    index.remove(gone)
    kept = [row for row, item in enumerate(ids) if item not in gone]
    assert index.ids == [ids[row] for row in kept] and len(index) == 596
    np.testing.assert_array_equal(index.codes(), pack(codes[kept]))
    got_d, got_p = index.search(pack(codes[::37]), 8)
    if kind in ("flat", "ivf"):  # exact (ivf: every cell probed)
        assert_exact_top_k(got_d, got_p, codes[::37], codes[kept], 8)
    found = got_p >= 0
    np.testing.assert_array_equal(
        hamming_distances(codes[::37], codes[kept])[np.nonzero(found)[0], got_p[found]],
        got_d[found],
    )


def test_add_and_remove_refuse_bad_ids_and_change_nothing(tmp_path):
    codes = random_codes(50, 16, 8)
    index = HammingIndex.build(pack(codes), [str(i) for i in range(50)])
    with pytest.raises(ValueError, match=r"2 of the ids are already in the index.*'3', '7'"):
        index.add(pack(codes[:3]), ["new", "3", "7"])
    with pytest.raises(ValueError, match="unique"):
        index.add(pack(codes[:2]), ["new", "new"])
    with pytest.raises(ValueError, match="Codes of 32 bits but the index holds 16"):
        index.add(pack(random_codes(1, 32, 0)), ["new"])
    with pytest.raises(ValueError, match=r"1 ids are not in the index.*'nope'"):
        index.remove(["3", "nope"])
    with pytest.raises(ValueError, match="every code"):
        index.remove(index.ids)
    assert index.ids == [str(i) for i in range(50)]
    np.testing.assert_array_equal(index.codes(), pack(codes))
