"""Per-tile label statistics: fractions over labelled pixels, multi-labels, unlabeled share."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipelines.labels.summary import summarize

NAMES = ("UNLABELED", "urban", "arable", "forest", "water")


def test_fractions_exclude_nodata_and_unlabeled() -> None:
    raster = np.array(
        [
            [1, 1, 2, 2],
            [3, 3, 3, 3],
            [0, 0, 255, 255],
            [255, 255, 255, 255],
        ],
        dtype=np.uint8,
    )
    s = summarize(raster, NAMES, 0)
    # 8 labelled pixels: urban 2, arable 2, forest 4.
    assert s.fractions == {"urban": 0.25, "arable": 0.25, "forest": 0.5}
    assert s.unlabeled_fraction == 0.5  # 2 UNLABELED + 6 no-data of 16
    assert s.multilabels == ("urban", "arable", "forest")
    assert s.multilabel.tolist() == [0, 1, 1, 1, 0]
    assert not s.flagged


def test_threshold_and_flag() -> None:
    raster = np.full((10, 10), 3, np.uint8)
    raster[0, :5] = 1  # urban: 5 of 100 labelled pixels
    raster[9, :] = 255
    s = summarize(raster, NAMES, 0, threshold=0.06, max_unlabeled=0.1)
    assert s.fractions["urban"] == pytest.approx(5 / 90, abs=1e-6)
    assert s.multilabels == ("forest",)  # urban 5.6 % is not above 6 %
    assert s.unlabeled_fraction == pytest.approx(0.1)
    assert s.flagged  # 10 % reaches max_unlabeled 0.1 (reBEN drops >= 25 %)


def test_without_unlabeled_class_background_is_a_class() -> None:
    names = ("background", "road", "building")
    raster = np.array([[0, 0], [1, 2]], np.uint8)
    s = summarize(raster, names, None)
    assert s.fractions == {"background": 0.5, "road": 0.25, "building": 0.25}
    assert s.multilabels == names
    assert s.unlabeled_fraction == 0.0


def test_nothing_labelled() -> None:
    s = summarize(np.full((3, 3), 255, np.uint8), NAMES, 0, max_unlabeled=0.25)
    assert s.fractions == {} and s.multilabels == () and s.unlabeled_fraction == 1.0
    assert s.flagged and s.multilabel.sum() == 0


def test_index_beyond_classes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[7\]"):
        summarize(np.array([[7, 1]], np.uint8), NAMES, 0)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, (6, 7), elements=st.sampled_from([0, 1, 2, 3, 4, 255])),
    st.floats(0, 0.9),
)
def test_properties(raster: np.ndarray, threshold: float) -> None:
    s = summarize(raster, NAMES, 0, threshold=threshold)
    labelled = int(np.isin(raster, [1, 2, 3, 4]).sum())
    if labelled:
        assert sum(s.fractions.values()) == pytest.approx(1.0, abs=1e-5)
    assert s.unlabeled_fraction == pytest.approx((raster.size - labelled) / raster.size, abs=1e-6)
    for i, name in enumerate(NAMES):
        share = float((raster == i).sum()) / labelled if labelled and i else 0.0
        assert s.multilabel[i] == (1 if i and share > threshold else 0)
        assert (name in s.multilabels) == bool(s.multilabel[i])
