"""Retrieval metrics: hand-worked cases, then a brute-force NumPy reference of DESIGN §3."""

import json

import numpy as np
import pytest

from harr_tf import retrieval

# One 4-bit query against six items. Distance = number of -1 bits here.
#   item      code            d  label  relevant
#   0     [-1, -1,  1,  1]    2    0       1
#   1     [ 1,  1,  1, -1]    1    1       0
#   2     [ 1,  1,  1,  1]    0    0       1
#   3     [-1,  1,  1,  1]    1    0       1
#   4     [ 1, -1, -1,  1]    2    2       0
#   5     [-1, -1, -1, -1]    4    0       1
# Ranking by (d, index): 2, 1, 3, 0, 4, 5 → relevance 1, 0, 1, 1, 0, 1.
# Ties go to the lower index: item 1 before item 3, item 0 before item 4; the other
# order would give relevance 1, 1, 0, 0, 1, 1 and a different AP.
QUERY = np.array([[1, 1, 1, 1]], dtype=np.int8)
DATABASE = np.array(
    [
        [-1, -1, 1, 1],
        [1, 1, 1, -1],
        [1, 1, 1, 1],
        [-1, 1, 1, 1],
        [1, -1, -1, 1],
        [-1, -1, -1, -1],
    ],
    dtype=np.int8,
)
DATABASE_LABELS = np.array([0, 1, 0, 0, 2, 0])


def test_hamming_distances_hand_worked():
    distances = retrieval.hamming_distances(QUERY, DATABASE)
    assert distances.dtype == np.int32
    np.testing.assert_array_equal(distances, [[2, 1, 0, 1, 2, 4]])


def test_map_ties_broken_by_index():
    # Whole list: hits at ranks 1, 3, 4, 6 → AP = (1/1 + 2/3 + 3/4 + 4/6) / 4 = 37/48.
    ap = retrieval.mean_average_precision(QUERY, DATABASE, [0], DATABASE_LABELS, top_k=None)
    assert ap == pytest.approx(37 / 48)
    # Top 3 = 1, 0, 1: R = 2, AP = (1/1 + 2/3) / 2 = 5/6.
    ap = retrieval.mean_average_precision(QUERY, DATABASE, [0], DATABASE_LABELS, top_k=3)
    assert ap == pytest.approx(5 / 6)
    # Top 4 = 1, 0, 1, 1: R = 3, AP = (1 + 2/3 + 3/4) / 3 = 29/36.
    ap = retrieval.mean_average_precision(QUERY, DATABASE, [0], DATABASE_LABELS, top_k=4)
    assert ap == pytest.approx(29 / 36)


def test_query_without_relevant_item_counts_as_zero():
    # Class 3 is not in the database: its AP is 0 and it still halves the mean.
    queries = np.concatenate([QUERY, QUERY])
    ap = retrieval.mean_average_precision(queries, DATABASE, [0, 3], DATABASE_LABELS, top_k=None)
    assert ap == pytest.approx(37 / 48 / 2)
    precision, recall = retrieval.precision_recall_by_radius(
        queries, DATABASE, [0, 3], DATABASE_LABELS
    )
    # Query 0 at radius 4 retrieves all six items, four relevant: precision 4/6, recall 1.
    assert precision[4] == pytest.approx(4 / 6 / 2)
    assert recall[4] == pytest.approx(1 / 2)


def test_precision_at_n_hand_worked():
    # Relevance in rank order 1, 0, 1, 1, 0, 1; n = 7 is beyond the database: dropped.
    result = retrieval.precision_at_n(QUERY, DATABASE, [0], DATABASE_LABELS, ns=(1, 3, 6, 7))
    assert result == pytest.approx({1: 1.0, 3: 2 / 3, 6: 4 / 6})


def test_precision_recall_by_radius_hand_worked():
    # Query A is QUERY: distances 2, 1, 0, 1, 2, 4; relevant items 0, 2, 3, 5.
    #   r=0 {2}: P 1, R 1/4;  r=1 {1,2,3}: P 2/3, R 2/4;  r=2,3 {0..4}: P 3/5, R 3/4;
    #   r=4 all: P 4/6, R 1.
    # Query B = [1, -1, 1, -1], also class 0: distances 2, 1, 2, 3, 2, 2.
    #   r=0 retrieves nothing: P 0 by convention, R 0;  r=1 {1}: P 0, R 0;
    #   r=2 {0,1,2,4,5}: P 3/5, R 3/4;  r=3,4 all: P 4/6, R 1.
    queries = np.array([[1, 1, 1, 1], [1, -1, 1, -1]])
    precision, recall = retrieval.precision_recall_by_radius(
        queries, DATABASE, [0, 0], DATABASE_LABELS
    )
    assert precision.shape == recall.shape == (5,)
    expected_precision = [1 / 2, 1 / 3, 3 / 5, (3 / 5 + 4 / 6) / 2, 4 / 6]
    expected_recall = [1 / 8, 1 / 4, 3 / 4, (3 / 4 + 1) / 2, 1.0]
    np.testing.assert_allclose(precision, expected_precision)
    np.testing.assert_allclose(recall, expected_recall)
    assert retrieval.precision_at_radius(
        queries, DATABASE, [0, 0], DATABASE_LABELS
    ) == pytest.approx(3 / 5)
    # A radius beyond the 4 bits retrieves everything, as radius 4 does.
    assert retrieval.precision_at_radius(
        queries, DATABASE, [0, 0], DATABASE_LABELS, radius=9
    ) == pytest.approx(4 / 6)


@pytest.mark.parametrize("dtype", [np.int32, bool])
def test_multi_label_relevance_is_one_shared_label(dtype):
    # Query labels {0, 2}. Items: {1} no, {2} yes, {0, 1} yes, {} no.
    # Distances from [1, 1]: 0, 1, 0, 2 → ranking 0, 2, 1, 3 → relevance 0, 1, 1, 0.
    # AP = (1/2 + 2/3) / 2 = 7/12.
    database = np.array([[1, 1], [1, -1], [1, 1], [-1, -1]])
    database_labels = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=dtype)
    query_labels = np.array([[1, 0, 1]], dtype=dtype)
    ap = retrieval.mean_average_precision(
        [[1, 1]], database, query_labels, database_labels, top_k=None
    )
    assert ap == pytest.approx(7 / 12)


def test_whole_database_includes_last_item():
    # The only relevant item is the last and farthest: rank 5 of 5, AP = (1/5) / 1.
    database = np.array([[1, 1]] * 4 + [[-1, -1]])
    labels = np.array([1, 1, 1, 1, 0])
    whole = retrieval.mean_average_precision([[1, 1]], database, [0], labels, top_k=None)
    assert whole == pytest.approx(1 / 5)
    assert retrieval.mean_average_precision([[1, 1]], database, [0], labels, top_k=4) == 0.0
    # top_k beyond the database is clipped to it.
    assert retrieval.mean_average_precision(
        [[1, 1]], database, [0], labels, top_k=100
    ) == pytest.approx(1 / 5)


def brute_force(queries, database, query_labels, database_labels, top_k, ns):
    """DESIGN §3 written plainly: a stable full sort per query, loops over ranks and radii."""
    bits = queries.shape[1]
    aps, at_n = [], {n: [] for n in ns}
    precision, recall = np.zeros((len(queries), bits + 1)), np.zeros((len(queries), bits + 1))
    for i, query in enumerate(queries):
        distances = np.array([np.sum(query != item) for item in database])
        if query_labels.ndim == 1:
            relevant = database_labels == query_labels[i]
        else:
            relevant = np.array([np.any(query_labels[i] & row) for row in database_labels])
        ranked = relevant[np.argsort(distances, kind="stable")]
        depth = len(database) if top_k is None else min(top_k, len(database))
        hits, total = 0, 0.0
        for k in range(depth):
            if ranked[k]:
                hits += 1
                total += hits / (k + 1)
        aps.append(total / hits if hits else 0.0)
        for n in ns:
            at_n[n].append(ranked[:n].sum() / n)
        for r in range(bits + 1):
            retrieved = distances <= r
            found = np.sum(retrieved & relevant)
            precision[i, r] = found / retrieved.sum() if retrieved.any() else 0.0
            recall[i, r] = found / relevant.sum() if relevant.any() else 0.0
    return (
        np.mean(aps),
        {n: np.mean(v) for n, v in at_n.items()},
        precision.mean(axis=0),
        recall.mean(axis=0),
    )


def random_case(seed, multi_label, num_queries=23, database_size=150, bits=8):
    rng = np.random.default_rng(seed)
    queries = rng.choice(np.array([-1, 1], dtype=np.int8), size=(num_queries, bits))
    database = rng.choice(np.array([-1, 1], dtype=np.int8), size=(database_size, bits))
    if multi_label:
        # Sparse multi-hot rows, some empty, so some queries have no relevant item.
        labels = (rng.random((num_queries + database_size, 4)) < 0.2).astype(np.int32)
    else:
        labels = rng.integers(0, 6, size=num_queries + database_size)
    return queries, database, labels[:num_queries], labels[num_queries:]


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("top_k", [10, None, 1000])
def test_against_brute_force(seed, multi_label, top_k):
    # 8 bits over 150 items: many equal distances, so tie order matters everywhere.
    queries, database, query_labels, database_labels = random_case(seed, multi_label)
    ns = (1, 5, 50, 150)
    expected_map, expected_at_n, expected_precision, expected_recall = brute_force(
        queries, database, query_labels, database_labels, top_k, ns
    )
    args = (queries, database, query_labels, database_labels)
    assert retrieval.mean_average_precision(*args, top_k, chunk_size=7) == pytest.approx(
        expected_map
    )
    assert retrieval.precision_at_n(*args, ns + (151,), chunk_size=7) == pytest.approx(
        expected_at_n
    )
    precision, recall = retrieval.precision_recall_by_radius(*args, chunk_size=7)
    np.testing.assert_allclose(precision, expected_precision)
    np.testing.assert_allclose(recall, expected_recall)
    assert retrieval.precision_at_radius(*args, chunk_size=7) == pytest.approx(
        expected_precision[2]
    )


@pytest.mark.parametrize("multi_label", [False, True])
def test_evaluate_matches_individual_metrics(multi_label):
    queries, database, query_labels, database_labels = random_case(5, multi_label)
    args = (queries, database, query_labels, database_labels)
    ns = (1, 10, 100, 1000)
    result = retrieval.evaluate(*args, top_k=20, ns=ns, chunk_size=4)
    json.dumps(result)  # plain numbers and lists, ready for metrics.json
    assert result["map"] == pytest.approx(retrieval.mean_average_precision(*args, top_k=20))
    assert result["precision_at_n"] == pytest.approx(retrieval.precision_at_n(*args, ns=ns))
    assert result["precision_at_radius_2"] == pytest.approx(
        retrieval.precision_at_radius(*args, radius=2)
    )
    precision, recall = retrieval.precision_recall_by_radius(*args)
    assert result["pr_curve"]["radius"] == list(range(9))
    np.testing.assert_allclose(result["pr_curve"]["precision"], precision)
    np.testing.assert_allclose(result["pr_curve"]["recall"], recall)


CODES = np.ones((3, 4), dtype=np.int8)
LABELS = np.zeros(3, dtype=np.int64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"query_codes": np.ones(4)}, r"`query_codes` must be a 2-D .* shape=\(4,\)"),
        ({"database_codes": np.zeros((3, 4))}, r"only -1 and \+1. Received values: \[0.0\]"),
        ({"database_codes": np.ones((3, 5))}, "same number of bits. Received: 4 and 5"),
        ({"query_labels": np.zeros(2)}, r"one row per code \(3\). Received: shape=\(2,\)"),
        ({"database_labels": np.zeros((3, 2, 2))}, r"class ids .* shape=\(3, 2, 2\)"),
        ({"database_labels": np.zeros((3, 2))}, r"same kind.* shapes \(3,\) and \(3, 2\)"),
        (
            {"query_labels": np.zeros((3, 2)), "database_labels": np.zeros((3, 5))},
            r"same C.* shapes \(3, 2\) and \(3, 5\)",
        ),
        ({"top_k": 0}, "`top_k` must be a positive integer or None. Received: top_k=0"),
        ({"query_codes": np.ones((0, 4))}, r"`query_codes` must hold at least one .*\(0, 4\)"),
        ({"database_codes": np.ones((0, 4))}, "`database_codes` must hold at least one"),
        ({"chunk_size": 0}, "`chunk_size` must be a positive integer. Received: 0"),
        ({"ns": (0, 10)}, r"`ns` must be a positive integer. Received: ns=\(0, 10\)"),
    ],
)
def test_invalid_inputs(kwargs, message):
    args = {
        "query_codes": CODES,
        "database_codes": CODES,
        "query_labels": LABELS,
        "database_labels": LABELS,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        retrieval.evaluate(**args)


def test_invalid_radius():
    with pytest.raises(ValueError, match="`radius` must be a non-negative integer"):
        retrieval.precision_at_radius(CODES, CODES, LABELS, LABELS, radius=-1)


def test_asymmetric_map_hand_worked():
    # h = [0.5, 0.25, 1, -0.5] against the six items of DATABASE:
    #   item  ⟨h, b⟩                          label  relevant
    #   0     -0.5 - 0.25 + 1 - 0.5 = -0.25     0       1
    #   1      0.5 + 0.25 + 1 + 0.5 =  2.25     1       0
    #   2      0.5 + 0.25 + 1 - 0.5 =  1.25     0       1
    #   3     -0.5 + 0.25 + 1 - 0.5 =  0.25     0       1
    #   4      0.5 - 0.25 - 1 - 0.5 = -1.25     2       0
    #   5     -0.5 - 0.25 - 1 + 0.5 = -1.25     0       1
    # Ranking by (-score, index): 1, 2, 3, 0, 4, 5 → relevance 0, 1, 1, 1, 0, 1; items
    # 4 and 5 tie, the lower index first. AP = (1/2 + 2/3 + 3/4 + 4/6) / 4 = 31/48.
    h = np.array([[0.5, 0.25, 1.0, -0.5]])
    ap = retrieval.asymmetric_mean_average_precision(h, DATABASE, [0], DATABASE_LABELS, None)
    assert ap == pytest.approx(31 / 48)
    # Top 3 = 0, 1, 1: AP = (1/2 + 2/3) / 2 = 7/12. The Hamming ranking's is 5/6.
    ap = retrieval.asymmetric_mean_average_precision(h, DATABASE, [0], DATABASE_LABELS, 3)
    assert ap == pytest.approx(7 / 12)


def numpy_asymmetric_map(continuous, database, query_labels, database_labels, top_k):
    """The asymmetric ranking written plainly: float64 scores, lexsort by (-score, index)."""
    aps = []
    for i, query in enumerate(continuous.astype(np.float64)):
        scores = database.astype(np.float64) @ query
        order = np.lexsort((np.arange(len(database)), -scores))[:top_k]
        if query_labels.ndim == 1:
            ranked = database_labels[order] == query_labels[i]
        else:
            ranked = (database_labels[order] & query_labels[i]).any(axis=1)
        hits = np.cumsum(ranked)
        precision = hits / np.arange(1, len(ranked) + 1)
        aps.append((precision * ranked).sum() / hits[-1] if hits[-1] else 0.0)
    return np.mean(aps)


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("top_k", [10, 150])
def test_asymmetric_map_against_numpy(multi_label, top_k):
    # Continuous codes in multiples of 1/4: float32 sums are exact and many scores tie,
    # so the test sees the tie order; the sign of h alone would rank otherwise.
    _, database, query_labels, database_labels = random_case(3, multi_label)
    rng = np.random.default_rng(4)
    continuous = rng.integers(-4, 5, size=(len(query_labels), database.shape[1])) / 4
    expected = numpy_asymmetric_map(continuous, database, query_labels, database_labels, top_k)
    got = retrieval.asymmetric_mean_average_precision(
        continuous, database, query_labels, database_labels, top_k, chunk_size=5
    )
    assert got == pytest.approx(expected)


def test_asymmetric_map_of_sign_codes_is_the_hamming_map():
    # h = b: ⟨b_q, b_x⟩ = bits − 2·d, so both rankings (and their tie orders) agree.
    queries, database, query_labels, database_labels = random_case(6, False)
    args = (queries, database, query_labels, database_labels, 20)
    hamming = retrieval.mean_average_precision(*args)
    assert retrieval.asymmetric_mean_average_precision(*args) == pytest.approx(hamming)


def test_asymmetric_map_rejects_bad_input():
    h = np.array([[0.5, 0.25, 1.0, -0.5]])
    with pytest.raises(ValueError, match="finite real codes"):
        retrieval.asymmetric_mean_average_precision([[np.nan] * 4], DATABASE, [0], [0] * 6)
    with pytest.raises(ValueError, match="same number of bits"):
        retrieval.asymmetric_mean_average_precision(h[:, :3], DATABASE, [0], DATABASE_LABELS)
    with pytest.raises(ValueError, match="only -1 and"):
        retrieval.asymmetric_mean_average_precision(h, DATABASE * 2, [0], DATABASE_LABELS)
