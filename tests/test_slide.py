"""Reading OME-Zarr metadata: versions, axes, pixel sizes, channels, level choice."""

import numpy as np
import pytest
import zarr

from sebre_ij.errors import UserError
from sebre_ij.slide import open_slide, pick_level
from sebre_ij.stores import write_slide


def test_open_reads_levels_axes_and_pixel_sizes(store):
    path, version, image = store
    slide = open_slide(path)
    assert slide.version == version
    assert slide.zarr_format == (2 if version == "0.4" else 3)
    assert slide.axes == "cyx"
    assert slide.channels == ["R", "G", "B"]
    assert slide.yx_shape(0) == (600, 800)
    assert [slide.pixel_size(i) for i in range(len(slide.levels))] == [2.0 * 2**i for i in range(len(slide.levels))]
    assert slide.label_names() == ["truth"]
    np.testing.assert_array_equal(np.asarray(slide.plane(0)), image)
    np.testing.assert_array_equal(slide.plane(0, 0, slice(10, 500, 3), slice(None, None, 7)), image[:, 10:500:3, ::7])


def test_pick_level_nearest_in_log_scale(store):
    slide = open_slide(store[0])
    assert pick_level(slide, 2.0) == 0
    assert pick_level(slide, 7.0) == 2  # 8 is nearer than 4 in ratio
    assert pick_level(slide, 1000.0) == len(slide.levels) - 1


def test_zyx_plane_view(tmp_path):
    path = tmp_path / "z.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    data = np.arange(2 * 40 * 50, dtype=np.uint16).reshape(2, 40, 50)
    root.create_array("0", data=data, chunks=(1, 20, 20))
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "z", "type": "space"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.5, 0.5]}]}],
        }
    ]
    slide = open_slide(path)
    assert slide.n_planes == 2 and slide.channels == ["C0"]
    np.testing.assert_array_equal(np.asarray(slide.plane(0, z=1))[0], data[1])


@pytest.mark.parametrize(
    "make, words",
    [(lambda p: p.mkdir(), "not a zarr store"), (lambda p: zarr.open_group(p, mode="w", zarr_format=2), "multiscales")],
)
def test_bad_stores_are_user_errors(tmp_path, make, words):
    path = tmp_path / "bad.zarr"
    make(path)
    with pytest.raises(UserError, match=words):
        open_slide(path)


def test_missing_path_is_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        open_slide(tmp_path / "nope.zarr")


def test_fsspec_url_reads_like_a_path(store):
    path, version, image = store
    slide = open_slide(f"file://{path}")
    assert slide.version == version and slide.label_names() == ["truth"]
    np.testing.assert_array_equal(np.asarray(slide.plane(1)), np.asarray(open_slide(path).plane(1)))


def test_scales_are_read_in_their_axis_unit(tmp_path):
    from sebre_ij.synth import synth_slide

    image, truth = synth_slide(1, (256, 256), 2.0, seed=1)
    for unit, scale in (("nanometer", 2000.0), ("millimeter", 0.002), ("micrometer", 2.0)):
        write_slide(tmp_path / f"{unit}.zarr", image, truth, 2.0, unit=unit, levels=2)
        slide = open_slide(tmp_path / f"{unit}.zarr")
        assert slide.levels[0].scale[-1] == pytest.approx(scale) and slide.units["x"] == unit
        assert slide.pixel_size(0) == pytest.approx(2.0) and slide.pixel_size(1) == pytest.approx(4.0)
    assert open_slide(tmp_path / "nanometer.zarr", pixel_size=5.0).pixel_size(1) == pytest.approx(10.0)


def test_a_unit_that_is_no_length_is_refused(tmp_path):
    from sebre_ij.synth import synth_slide

    image, truth = synth_slide(1, (256, 256), 2.0, seed=1)
    store = tmp_path / "furlong.zarr"
    write_slide(store, image, truth, 2.0, levels=1)
    attrs = dict(zarr.open_group(str(store), mode="r+").attrs)
    attrs["multiscales"][0]["axes"][-1]["unit"] = "furlong"
    zarr.open_group(str(store), mode="r+").attrs.update(attrs)
    with pytest.raises(UserError, match=r"axis x has unit 'furlong', not a length NGFF names.*pixel_size=UM"):
        open_slide(store)
    assert open_slide(store, pixel_size=2.0).pixel_size(0) == pytest.approx(2.0)


def test_a_command_on_a_store_that_does_not_answer_exits_2_in_one_line(http_store):
    from typer.testing import CliRunner

    from sebre_ij.cli import app

    url, servers, _ = http_store
    servers[0].kill()
    servers[0].wait()
    result = CliRunner().invoke(app, ["info", url])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"{url}: the store does not answer" in result.stderr and "check the connection" in result.stderr
