"""Protocol splits (DESIGN §3): disjointness, exact counts, seeding, persistence, errors."""

import dataclasses

import numpy as np
import pytest

from harr_tf.data import PROTOCOLS, Protocol, ProtocolSplit, get_protocol, make_split


def class_labels(classes, per_class, seed=0):
    """Shuffled single-label ids with exactly `per_class` items in each class."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


def check_structure(split, num_items):
    """The invariants every split holds."""
    for part in (split.query, split.database, split.train, split.validation):
        assert part.dtype == np.int64
        np.testing.assert_array_equal(part, np.unique(part))  # sorted, no repeats
    np.testing.assert_array_equal(np.union1d(split.query, split.database), np.arange(num_items))
    assert np.intersect1d(split.query, split.database).size == 0
    assert np.isin(split.train, split.database).all()
    assert np.isin(split.validation, split.database).all()
    assert np.intersect1d(split.train, split.validation).size == 0


def test_standard_split_has_exact_per_class_counts():
    labels = class_labels(10, 700)
    split = make_split(labels, len(labels), seed=3)
    check_structure(split, len(labels))
    assert (split.protocol, split.seed) == ("standard", 3)
    assert (len(split.query), len(split.database)) == (1000, 6000)
    for part, count in ((split.query, 100), (split.validation, 50), (split.train, 500)):
        np.testing.assert_array_equal(np.bincount(labels[part], minlength=10), [count] * 10)


def test_seed_reproduces_and_another_seed_differs():
    labels = class_labels(5, 700)
    first, again = (make_split(labels, len(labels), seed=7) for _ in range(2))
    other = make_split(labels, len(labels), seed=8)
    for name in ("query", "database", "train", "validation"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.query, other.query)
    assert not np.array_equal(first.train, other.train)


def test_train_size_override_keeps_query_and_validation():
    labels = class_labels(4, 700)
    standard = make_split(labels, len(labels), seed=1)
    smaller = make_split(
        labels, len(labels), dataclasses.replace(PROTOCOLS["standard"], train_per_class=20), seed=1
    )
    everything = make_split(
        labels, len(labels), dataclasses.replace(PROTOCOLS["standard"], train_per_class=None)
    )
    np.testing.assert_array_equal(standard.query, smaller.query)
    np.testing.assert_array_equal(standard.validation, smaller.validation)
    assert len(smaller.train) == 80
    np.testing.assert_array_equal(
        everything.train, np.setdiff1d(everything.database, everything.validation)
    )


def test_small_classes_shrink_their_queries_and_validation():
    # Classes of 1, 3, 40, 500 and 700 items; the standard protocol asks 100 + 50 + 500.
    sizes = (1, 3, 40, 500, 700)
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(5), sizes))
    split = make_split(labels, len(labels), seed=1)
    check_structure(split, len(labels))
    drawn = {tuple(row[1:]) for row in split.class_counts}
    # (items, query, validation, train): a tenth of a small class for query and for
    # validation, the rest trained on; a class under 10 items stays in the database only.
    assert drawn == {(1, 0, 0, 1), (3, 0, 0, 3), (40, 4, 4, 32), (500, 50, 50, 400),
                     (700, 100, 50, 500)}  # fmt: skip
    np.testing.assert_array_equal(split.class_counts[:, 0], np.arange(5))
    for label, items, query, validation, train in split.class_counts:
        assert np.sum(labels[split.query] == label) == query
        assert np.sum(labels[split.validation] == label) == validation
        assert np.sum(labels[split.train] == label) == train
        assert np.sum(labels[split.database] == label) == items - query
    assert "class" in split.describe() and len(split.describe().splitlines()) == 6


def test_a_class_large_enough_keeps_the_protocol_and_the_rng_stream():
    # Shrinking other classes changes nothing in a class that has what is asked.
    labels = np.repeat(np.arange(2), (700, 700))
    small = np.concatenate([labels, np.full(30, 2)])
    split, with_small = make_split(labels, len(labels)), make_split(small, len(small))
    np.testing.assert_array_equal(split.query, with_small.query[: len(split.query)])
    np.testing.assert_array_equal(split.train, with_small.train[: len(split.train)])


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_each_named_protocol(name):
    protocol = PROTOCOLS[name]
    per_class = 1600
    labels = class_labels(3, per_class)
    split = make_split(labels, len(labels), name)
    check_structure(split, len(labels))
    assert split.protocol == name
    assert len(split.query) == 3 * protocol.query_per_class
    assert len(split.validation) == 3 * protocol.validation_per_class
    expected_train = (
        len(split.database) - len(split.validation)
        if protocol.train_per_class is None
        else 3 * protocol.train_per_class
    )
    assert len(split.train) == expected_train


def test_named_protocol_settings():
    assert PROTOCOLS["standard"] == Protocol("standard")
    assert PROTOCOLS["standard"].top_k == 1000 and PROTOCOLS["standard"].train_per_class == 500
    assert PROTOCOLS["cifar10-i"].query_per_class == 1000
    assert PROTOCOLS["cifar10-i"].train_per_class is None
    assert PROTOCOLS["cifar10-i"].top_k == 1000
    assert PROTOCOLS["authors"].query_per_class == 1000
    assert PROTOCOLS["authors"].train_per_class == 500
    assert PROTOCOLS["authors"].top_k is None


def test_get_protocol():
    custom = Protocol("mine", query_per_class=5)
    assert get_protocol(custom) is custom
    assert get_protocol("authors") is PROTOCOLS["authors"]
    with pytest.raises(ValueError, match="Unknown protocol 'cifar'.*standard, cifar10-i, authors"):
        get_protocol("cifar")
    with pytest.raises(ValueError, match="train_per_class=-1"):
        Protocol("broken", train_per_class=-1)


def test_multi_label_totals_and_labelled_queries():
    rng = np.random.default_rng(0)
    labels = (rng.random((3000, 5)) < 0.3).astype(np.uint8)
    labels[:400] = 0  # items without any label
    protocol = Protocol(
        "small", multi_label_query=200, multi_label_validation=50, multi_label_train=1000
    )
    split = make_split(labels, len(labels), protocol, seed=2)
    check_structure(split, len(labels))
    assert (len(split.query), len(split.validation), len(split.train)) == (200, 50, 1000)
    assert labels[split.query].any(axis=1).all()
    assert labels[split.validation].any(axis=1).all()
    again = make_split(labels, len(labels), protocol, seed=2)
    np.testing.assert_array_equal(split.train, again.train)


def test_multi_label_too_few_items_shrinks_like_a_small_class():
    """Fewer labelled items than queries + validation (standard: 1,000 + 500) give a
    tenth of them to each, as a small single-label class does; training takes what is
    left, up to the 5,000 asked for, instead of an error no command-line flag fixes."""
    labels = np.ones((600, 3), np.uint8)
    labels[:100] = 0  # 500 labelled items
    split = make_split(labels, len(labels), seed=1)
    check_structure(split, len(labels))
    assert (len(split.query), len(split.validation), len(split.train)) == (50, 50, 500)
    assert labels[split.query].any(axis=1).all()
    assert labels[split.validation].any(axis=1).all()
    protocol = Protocol("p", multi_label_query=100, multi_label_validation=10)
    split = make_split(np.ones((600, 3), np.uint8), 600, protocol)
    assert (len(split.query), len(split.validation), len(split.train)) == (100, 10, 490)
    tiny = make_split(np.ones((9, 2), np.uint8), 9)
    assert tiny.query.size == 0 and tiny.validation.size == 0 and len(tiny.train) == 9


@pytest.mark.parametrize("num_items, train", [(300, 300), (6000, 5000)])
def test_unlabeled_split(num_items, train):
    split = make_split(None, num_items, seed=4)
    check_structure(split, num_items)
    assert split.query.size == 0 and split.validation.size == 0
    np.testing.assert_array_equal(split.database, np.arange(num_items))
    assert len(split.train) == train
    np.testing.assert_array_equal(split.train, make_split(None, num_items, seed=4).train)
    everything = dataclasses.replace(PROTOCOLS["standard"], unlabeled_train=None)
    assert len(make_split(None, num_items, everything).train) == num_items


def test_labels_must_match_num_items():
    with pytest.raises(ValueError, match=r"num_items=10.*shape=\(9,\)"):
        make_split(np.zeros(9, int), 10)


def test_save_load_round_trip(tmp_path):
    labels = class_labels(3, 700)
    split = make_split(labels, len(labels), "standard", seed=11)
    path = tmp_path / "split"  # no .npz suffix: saved at exactly this path
    split.save(path)
    loaded = ProtocolSplit.load(path)
    assert (loaded.protocol, loaded.seed) == ("standard", 11)
    for name in ("query", "database", "train", "validation", "class_counts"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(split, name))
        assert getattr(loaded, name).dtype == np.int64


def test_load_rejects_other_npz(tmp_path):
    np.savez(tmp_path / "other.npz", query=np.arange(3))
    with pytest.raises(ValueError, match=r"not a saved ProtocolSplit: it lacks \['database'"):
        ProtocolSplit.load(tmp_path / "other.npz")
