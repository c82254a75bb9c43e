"""Seeded query / database / train / validation splits of the evaluation protocol (DESIGN §3).

Every mAP in this project is measured on a split made here, saved with the run
so it can be audited and reused. Tuning uses `validation` (drawn from the
database), never the query set.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How many items go where, and the K of mAP@K.

    Attributes:
        name: the protocol's name, saved with every split made from it.
        query_per_class: single-label queries per class. Defaults to 100.
        train_per_class: single-label training items per class, drawn from the
            database minus validation; None = all of it. Defaults to 500.
        validation_per_class: single-label tuning queries per class, drawn from the
            database only (the tuning database is the database minus them).
            Defaults to 50.
        top_k: K of mAP@K for single-label data; None = the whole database.
            Defaults to 1000.
        multi_label_query: multi-label queries in total (at most a tenth of the
            labelled items when they are fewer than queries and validation together).
            Defaults to 1000.
        multi_label_train: multi-label training items in total, at most the database
            minus validation. Defaults to 5000.
        multi_label_validation: multi-label tuning queries in total (at most a tenth
            of the labelled items, as for queries). Defaults to 500.
        multi_label_top_k: K of mAP@K for multi-label data. Defaults to 5000.
        unlabeled_train: training items, a seeded random sample, when the dataset
            has no labels (then there is no query or validation set and the
            database is everything); None = all items. Defaults to 5000.
    """

    name: str
    query_per_class: int = 100
    train_per_class: int | None = 500
    validation_per_class: int = 50
    top_k: int | None = 1000
    multi_label_query: int = 1000
    multi_label_train: int = 5000
    multi_label_validation: int = 500
    multi_label_top_k: int = 5000
    unlabeled_train: int | None = 5000

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self)[1:]:
            value = getattr(self, field.name)
            if value is not None and value < 0:
                raise ValueError(
                    f"Protocol {self.name!r}: {field.name} must be >= 0. "
                    f"Received: {field.name}={value}"
                )


PROTOCOLS: dict[str, Protocol] = {
    # DESIGN §3: 100 queries and 500 training images per class, mAP@1000.
    "standard": Protocol("standard"),
    # CIFAR-10 (I): 1,000 queries per class, all the rest is database and training set.
    "cifar10-i": Protocol("cifar10-i", query_per_class=1000, train_per_class=None),
    # The authors' code: 1,000 queries per class, 500 per class trained, mAP over all.
    "authors": Protocol("authors", query_per_class=1000, train_per_class=500, top_k=None),
}


def get_protocol(protocol: Protocol | str) -> Protocol:
    """`protocol` itself, or the named one of `PROTOCOLS`.

    Sizes are overridden with `dataclasses.replace(get_protocol("standard"), ...)`.
    """
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"Unknown protocol {protocol!r}. Expected one of: {', '.join(PROTOCOLS)}, "
            "or a Protocol instance."
        )
    return PROTOCOLS[protocol]


_INDEX_FIELDS = ("query", "database", "train", "validation")


@dataclasses.dataclass(frozen=True, eq=False)
class ProtocolSplit:
    """Sorted int64 indices into a dataset.

    Attributes:
        query: evaluation queries.
        database: every index not in `query`.
        train: training items, a subset of `database`.
        validation: tuning queries, a subset of `database` disjoint from `train`.
        protocol: name of the protocol the split follows.
        seed: the seed it was drawn with.
        class_counts: single-label data: `(classes, 5)` int64 rows of (class id, items,
            query, validation, train) saying what was drawn from each class; else empty.
    """

    query: np.ndarray
    database: np.ndarray
    train: np.ndarray
    validation: np.ndarray
    protocol: str
    seed: int
    class_counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 5), np.int64))

    def save(self, path: str | os.PathLike) -> None:
        """Write the indices, protocol name and seed to an `.npz` file at exactly `path`."""
        with open(path, "wb") as stream:
            np.savez(
                stream,
                **{name: getattr(self, name) for name in _INDEX_FIELDS},
                protocol=np.str_(self.protocol),
                seed=np.int64(self.seed),
                class_counts=self.class_counts,
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProtocolSplit:
        """Read a split written by `save`."""
        with np.load(path, allow_pickle=False) as archive:
            missing = sorted(set(_INDEX_FIELDS + ("protocol", "seed")) - set(archive.files))
            if missing:
                raise ValueError(
                    f"{path} is not a saved ProtocolSplit: it lacks {missing}; "
                    f"it has {sorted(archive.files)}."
                )
            indices = {name: archive[name].astype(np.int64) for name in _INDEX_FIELDS}
            counts = archive["class_counts"] if "class_counts" in archive.files else None
            return cls(
                **indices,
                protocol=str(archive["protocol"]),
                seed=int(archive["seed"]),
                class_counts=np.zeros((0, 5), np.int64) if counts is None else counts,
            )

    def describe(self, class_names: tuple[str, ...] | None = None) -> str:
        """What was drawn from each class, one line per class (for the log)."""
        lines = [f"{'class':<24}{'items':>8}{'query':>8}{'valid.':>8}{'train':>8}"]
        for label, items, query, validation, train in self.class_counts:
            name = class_names[label] if class_names and label < len(class_names) else label
            lines.append(f"{str(name)[:23]:<24}{items:>8}{query:>8}{validation:>8}{train:>8}")
        return "\n".join(lines)


def make_split(
    labels: np.ndarray | None,
    num_items: int,
    protocol: Protocol | str = "standard",
    *,
    seed: int = 0,
) -> ProtocolSplit:
    """Draw the protocol's split with `np.random.default_rng(seed)`.

    Single-label `(N,)` labels: per class, in class order, one seeded permutation
    gives `query_per_class` queries, then `validation_per_class` validation items,
    then `train_per_class` training items (None: the rest of the class). Changing the
    train size therefore leaves query and validation unchanged. A class with fewer
    items than that gives at most a tenth of its items as queries and a tenth as
    validation (so a class under 10 items gives neither and stays in the database
    only), and the rest, up to `train_per_class`, for training.
    Multi-label `(N, C)` labels: `multi_label_*` totals at random; queries and
    validation come from items with at least one label, since a query with no label
    has no relevant item and an AP of 0 by construction. As for a small class, fewer
    labelled items than `multi_label_query + multi_label_validation` give at most a
    tenth of them as queries and a tenth as validation; training takes up to
    `multi_label_train` of the rest.
    No labels: no query or validation, the database is everything, and
    min(`unlabeled_train`, N) items are sampled for training.

    Raises:
        ValueError: `labels` that do not have `num_items` rows.
    """
    protocol = get_protocol(protocol)
    rng = np.random.default_rng(seed)
    everything = np.arange(num_items, dtype=np.int64)
    counts = np.zeros((0, 5), np.int64)
    if labels is None:
        query = validation = np.empty(0, np.int64)
        size = protocol.unlabeled_train
        train = rng.permutation(everything)[: num_items if size is None else size]
    else:
        labels = np.asarray(labels)
        if labels.ndim not in (1, 2) or len(labels) != num_items:
            raise ValueError(
                f"labels must have shape (num_items,) or (num_items, C) with "
                f"num_items={num_items}. Received: shape={labels.shape}"
            )
        if labels.ndim == 1:
            query, validation, train, counts = _single_label(labels, protocol, rng)
        else:
            query, validation, train = _multi_label(labels, protocol, rng)
    database = np.setdiff1d(everything, query)
    return ProtocolSplit(
        query=np.sort(query),
        database=database,
        train=np.sort(train),
        validation=np.sort(validation),
        protocol=protocol.name,
        seed=seed,
        class_counts=counts,
    )


def class_share(size: int, asked: int, wanted: int) -> int:
    """How many of a class's `size` items go to a part that asks for `asked` of each
    class: all of them when the class has the `wanted` items the protocol needs, else
    at most a tenth of the class."""
    return asked if size >= wanted else min(asked, size // 10)


def _single_label(
    labels: np.ndarray, protocol: Protocol, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    query, validation, train, counts = [], [], [], []
    wanted = protocol.query_per_class + protocol.validation_per_class
    wanted += protocol.train_per_class or 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        queries = class_share(len(members), protocol.query_per_class, wanted)
        held = queries + class_share(len(members), protocol.validation_per_class, wanted)
        end = None if protocol.train_per_class is None else held + protocol.train_per_class
        query.append(members[:queries])
        validation.append(members[queries:held])
        train.append(members[held:end])
        counts.append((label, len(members), queries, held - queries, len(train[-1])))
    parts = (np.concatenate(part).astype(np.int64) for part in (query, validation, train))
    return (*parts, np.asarray(counts, np.int64).reshape(-1, 5))


def _multi_label(
    labels: np.ndarray, protocol: Protocol, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labelled = rng.permutation(np.flatnonzero(labels.any(axis=1))).astype(np.int64)
    wanted = protocol.multi_label_query + protocol.multi_label_validation
    queries = class_share(len(labelled), protocol.multi_label_query, wanted)
    held = queries + class_share(len(labelled), protocol.multi_label_validation, wanted)
    query, validation = labelled[:queries], labelled[queries:held]
    pool = np.setdiff1d(np.arange(len(labels)), labelled[:held])
    train = rng.permutation(pool)[: protocol.multi_label_train].astype(np.int64)
    return query, validation, train
