"""Label values, and finished layers as readers see them."""

import numpy as np
import pytest

from sebre_ij.errors import UserError
from sebre_ij.labels import LabelInfo, class_base, class_lut, encode, open_labels
from sebre_ij.layer import create_layer
from sebre_ij.slide import open_slide
from sebre_ij.stores import write_slide


def test_encoding_is_section_times_base_plus_class():
    assert class_base(13) == 100 and class_base(10) == 10 and class_base(2) == 10
    values = encode(np.array([[0, 1, 3]]), np.array([[5, 0, 5]]), 100)
    np.testing.assert_array_equal(values, [[0, 0, 305]])


def test_class_lut_maps_each_value_to_its_class():
    properties = {101: {"class": 1}, 305: {"class": 5}, 7: {"name": "no class"}, 900: {"class": 9}}
    info = LabelInfo("x", None, properties, {}, [])
    lut = class_lut(info, 400)
    assert lut.shape == (401,) and lut[101] == 1 and lut[305] == 5 and lut[7] == 0
    assert np.count_nonzero(lut) == 2  # 900 lies past max_value


def test_readers_open_only_finished_layers(tmp_path):
    path = tmp_path / "s.zarr"
    write_slide(path, np.full((3, 256, 256), 240, np.uint8), np.zeros((256, 256), np.uint8), 1.0, chunk=128, levels=2)
    create_layer(open_slide(path), "pred", level=0)
    with pytest.raises(UserError, match="'pred' is unfinished"):
        open_labels(open_slide(path), "pred")
    with pytest.raises(UserError, match=r"no finished label layer 'other' \(layers: truth\)"):
        open_labels(open_slide(path), "other")
    assert open_labels(open_slide(path), "truth").paths == ["s0", "s1"]
