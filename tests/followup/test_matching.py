"""Lesion matching to tracks: TrackingUID first, then an optimal assignment on centroid distance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import FollowupError
from pipeline.followup.matching import Match, match_to_tracks

NAN = float("nan")


def _tracks(rows):
    return pd.DataFrame(rows, columns=["track_id", "tracking_uid", "x_mm", "y_mm", "z_mm"])


def _lesions(rows):
    return pd.DataFrame(rows, columns=["lesion_id", "tracking_uid", "x_mm", "y_mm", "z_mm"])


def test_tracking_uid_wins_over_position():
    # lesion L1 carries B's UID although it lies on A; L2 (no UID) lies near A too
    tracks = _tracks([("A", "1.2.3", 0, 0, 0), ("B", "1.2.4", 100, 0, 0)])
    lesions = _lesions([("L1", "1.2.4", 1, 0, 0), ("L2", "", 3, 0, 0)])
    res = match_to_tracks(tracks, lesions, max_distance_mm=20)
    assert res.matches == (Match("A", "L2", "position", 3.0), Match("B", "L1", "tracking_uid", 99.0))
    assert res.unmatched_tracks == () and res.unmatched_lesions == ()


def test_positional_swap_that_greedy_nearest_gets_wrong():
    # 1-D along x: A=0, B=8; L1=5, L2=13. Greedy closest pair first takes B-L1 (3 mm) and
    # leaves A-L2 (13 mm > 12 mm limit): one match. The optimal assignment pairs A-L1 (5) and
    # B-L2 (5): two matches, total 10 mm.
    tracks = _tracks([("A", "", 0, 0, 0), ("B", "", 8, 0, 0)])
    lesions = _lesions([("L1", "", 5, 0, 0), ("L2", "", 13, 0, 0)])
    res = match_to_tracks(tracks, lesions, max_distance_mm=12)
    assert [(m.track_id, m.lesion_id, m.method) for m in res.matches] == [
        ("A", "L1", "position"), ("B", "L2", "position")]
    assert [m.distance_mm for m in res.matches] == pytest.approx([5.0, 5.0], abs=1e-12)
    # with a wide limit the optimum is the same (total 10 mm beats 3 + 13 = 16 mm)
    res = match_to_tracks(tracks, lesions, max_distance_mm=100)
    assert [(m.track_id, m.lesion_id) for m in res.matches] == [("A", "L1"), ("B", "L2")]


def test_distance_limit_leaves_far_lesions_new_and_tracks_unmatched():
    tracks = _tracks([("A", "", 0, 0, 0), ("B", "", 50, 0, 0)])
    lesions = _lesions([("L1", "", 0, 0, 19.9), ("L2", "", 50, 0, 20.1)])
    res = match_to_tracks(tracks, lesions, max_distance_mm=20)
    assert [(m.track_id, m.lesion_id) for m in res.matches] == [("A", "L1")]
    assert res.matches[0].distance_mm == pytest.approx(19.9)
    assert res.unmatched_tracks == ("B",)
    assert res.unmatched_lesions == ("L2",)


def test_empty_segment_matches_only_by_tracking_uid():
    tracks = _tracks([("A", "1.9.1", 0, 0, 0), ("B", "", 30, 0, 0)])
    # L1: empty segment with A's UID -> matched, distance unknown; L2: empty segment without UID
    lesions = _lesions([("L1", "1.9.1", NAN, NAN, NAN), ("L2", "", NAN, NAN, NAN)])
    res = match_to_tracks(tracks, lesions, max_distance_mm=1000)
    assert res.matches == (Match("A", "L1", "tracking_uid", None),)
    assert res.unmatched_tracks == ("B",)
    assert res.unmatched_lesions == ("L2",)


def test_ambiguous_uid_falls_back_to_position():
    tracks = _tracks([("A", "1.5", 0, 0, 0), ("B", "1.5", 40, 0, 0)])
    lesions = _lesions([("L1", "1.5", 41, 0, 0), ("L2", "", 1, 0, 0)])
    res = match_to_tracks(tracks, lesions, max_distance_mm=5)
    assert [(m.track_id, m.lesion_id, m.method) for m in res.matches] == [
        ("A", "L2", "position"), ("B", "L1", "position")]


def test_ties_are_deterministic_whatever_the_row_order():
    # two tracks and two lesions on a square: both pairings total 2 x 10 mm
    tracks = _tracks([("T1", "", 0, 0, 0), ("T2", "", 10, 10, 0)])
    lesions = _lesions([("La", "", 10, 0, 0), ("Lb", "", 0, 10, 0)])
    first = match_to_tracks(tracks, lesions, max_distance_mm=20)
    assert len(first.matches) == 2
    rng = np.random.default_rng(0)
    for _ in range(10):
        t = tracks.iloc[rng.permutation(2)].reset_index(drop=True)
        les = lesions.iloc[rng.permutation(2)].reset_index(drop=True)
        assert match_to_tracks(t, les, max_distance_mm=20) == first


def test_missing_columns_and_duplicate_ids_are_errors():
    tracks = _tracks([("A", "", 0, 0, 0)])
    with pytest.raises(FollowupError, match="lacks the columns"):
        match_to_tracks(tracks, pd.DataFrame({"lesion_id": ["L1"]}), max_distance_mm=5)
    with pytest.raises(FollowupError, match="repeats the ids"):
        match_to_tracks(tracks, _lesions([("L1", "", 0, 0, 0), ("L1", "", 1, 0, 0)]),
                        max_distance_mm=5)
