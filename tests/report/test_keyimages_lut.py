"""The key images' stored colour table equals matplotlib's."""

import numpy as np

from pipeline.report import keyimages


def test_stored_inferno_table_equals_matplotlib():
    stored = keyimages._lut("inferno")
    assert stored.shape == (256, 3) and stored.dtype == np.uint8
    assert np.array_equal(stored, keyimages._lut_from_matplotlib("inferno"))
