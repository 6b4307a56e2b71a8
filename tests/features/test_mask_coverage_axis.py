"""The axis-by-axis coverage mapping equals the general point mapping bit for bit."""

import numpy as np
import pytest

from pipeline.features.pet import mask_coverage
from pipeline.geometry import Grid, map_mask_coverage


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a[0] == b[0] and a[1].dtype == b[1].dtype and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("seed", range(4))
def test_axis_aligned_coverage_is_identical(seed):
    rng = np.random.default_rng(seed)
    n_none = 0
    for _ in range(40):
        src = Grid((40, 50, 60), tuple(rng.uniform(0.3, 3, 3)), tuple(rng.uniform(-5, 5, 3)))
        dst = Grid(tuple(int(v) for v in rng.integers(20, 40, 3)), tuple(rng.uniform(2, 6, 3)),
                   tuple(rng.uniform(-20, 40, 3)))
        shape = tuple(int(v) for v in rng.integers(1, 12, 3))
        start = [int(rng.integers(0, n - s)) for n, s in zip((40, 50, 60), shape)]
        bbox = tuple((b, b + s) for b, s in zip(start, shape))
        crop = rng.random(shape) < rng.uniform(0.05, 1)
        for ss in (1, 2, 3):
            general = map_mask_coverage(crop, bbox, src, dst, supersample=ss)
            n_none += general is None
            assert _same(general, mask_coverage(crop, bbox, src, dst, supersample=ss))
    assert n_none < 90  # at least a quarter of the cases overlap the destination grid


def test_oblique_grid_uses_the_general_mapping():
    c, s = np.cos(0.3), np.sin(0.3)
    src = Grid((20, 20, 20), (1.0, 1.0, 2.0), (-10.0, -10.0, -20.0), (c, -s, 0, s, c, 0, 0, 0, 1))
    dst = Grid((10, 10, 10), (4.0, 4.0, 4.0), (-20.0, -20.0, -20.0))
    crop = np.ones((5, 6, 7), dtype=bool)
    bbox = ((3, 8), (4, 10), (5, 12))
    assert _same(map_mask_coverage(crop, bbox, src, dst, supersample=3),
                 mask_coverage(crop, bbox, src, dst, supersample=3))
