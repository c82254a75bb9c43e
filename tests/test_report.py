"""The retrieval grid shows which results are wrong: each retrieved image is framed by
whether it shares the query's class."""

import numpy as np
from matplotlib.colors import to_hex

from harr_tf.data.splits import ProtocolSplit
from harr_tf.report import RELEVANCE_COLOURS, _grid_figure


def test_each_result_is_framed_by_its_relevance():
    # One query (item 0, class 0) and a database ranked by Hamming distance from it:
    #   item:     1  2  3  4   (codes differ from the query's in 0, 1, 2, 3 bits)
    #   class:    0  1  0  1   → frames green, red, green, red; the query itself unframed.
    codes = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [-1, 1, 1, 1], [-1, -1, 1, 1], [-1, -1, -1, 1]])
    labels = np.array([0, 0, 1, 0, 1])
    split = ProtocolSplit(
        query=np.array([0]),
        database=np.arange(1, 5),
        train=np.arange(1, 5),
        validation=np.array([], np.int64),
        protocol="test",
        seed=0,
    )
    images = np.zeros((5, 4, 4, 1), np.uint8)
    figure = _grid_figure(
        lambda rows: images[rows], split, codes[:1], codes[1:], 4, labels, queries=2, top=4
    )
    axes = np.array(figure.axes).reshape(2, 5)[0]
    assert not any(spine.get_visible() for spine in axes[0].spines.values())
    expected = [
        RELEVANCE_COLOURS[1],
        RELEVANCE_COLOURS[0],
        RELEVANCE_COLOURS[1],
        RELEVANCE_COLOURS[0],
    ]
    for axis, colour in zip(axes[1:], expected, strict=True):
        assert {to_hex(spine.get_edgecolor()) for spine in axis.spines.values()} == {colour}
