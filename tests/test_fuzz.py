"""Property-based tests (hypothesis): ROI conversion keeps coordinates and names, outlines give back
their masks, and slide metadata of any shape is either read or refused with a UserError."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from roifile import ImagejRoi

from sebre_ij.errors import UserError
from sebre_ij.labels import open_labels
from sebre_ij.outlines import Region, regions_from_labels
from sebre_ij.readers import file_roi_rings, rings_mask
from sebre_ij.rois import imagej_roi, roi_rings, utf16_safe
from sebre_ij.slide import open_slide
from sebre_ij.stores import write_slide

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

coordinate = st.floats(0, 2e6, allow_nan=False, width=32)  # whole slides pass ImageJ's 16-bit integer range
ring = arrays(np.float64, st.tuples(st.integers(3, 12), st.just(2)), elements=coordinate)
part = st.tuples(ring, st.lists(ring, max_size=2))


@FAST
@given(parts=st.lists(part, min_size=1, max_size=3), name=st.text(min_size=1, max_size=30), group=st.booleans())
def test_polygons_survive_imagej_roi_bytes(parts, name, group):
    """Coordinates come back exactly as float32 (composite ROIs close each ring with its first vertex);
    names and properties come back whole, characters beyond the BMP as U+FFFD."""
    region = Region(7, name, 3, name, 1, (10, 20, 30), 0.5, parts)
    back = ImagejRoi.frombytes(imagej_roi(region, groups=group).tobytes())
    assert back.name == utf16_safe(name)
    assert f"class_name: {utf16_safe(name)}\n" in back.props
    simple, expected = roi_rings(region)
    rings = file_roi_rings(back)
    assert len(rings) == len(expected)
    for got, want in zip(rings, expected):
        want = want.astype(np.float32)
        np.testing.assert_array_equal(got, want if simple else np.vstack([want, want[:1]]))


@FAST
@given(mask=arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24))))
def test_outlines_rasterise_back_to_their_mask(mask):
    """Unsimplified outlines give back every pixel, whatever the blob (holes, diagonal touches)."""
    regions = regions_from_labels(mask.astype(np.uint8), {1: {"name": "cortex"}}, tolerance=0)
    rings = [r for region in regions for ext, holes in region.polygons for r in (ext, *holes)]
    np.testing.assert_array_equal(rings_mask(rings, mask.shape), mask)


def blobs(shape, centres, radii):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.any([(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r for (cy, cx), r in zip(centres, radii)], axis=0)


@FAST
@given(data=st.data())
def test_simplified_outlines_move_only_border_pixels(data):
    """With the default tolerance, a pixel may change only where the mask changes next to it."""
    n = data.draw(st.integers(1, 4))
    centres = data.draw(st.lists(st.tuples(st.integers(0, 47), st.integers(0, 63)), min_size=n, max_size=n))
    radii = data.draw(st.lists(st.floats(1.5, 14), min_size=n, max_size=n))
    mask = blobs((48, 64), centres, radii)
    regions = regions_from_labels(mask.astype(np.uint8), {1: {"name": "cortex"}})
    rings = [r for region in regions for ext, holes in region.polygons for r in (ext, *holes)]
    changed = rings_mask(rings, mask.shape) != mask
    padded = np.pad(mask, 1, mode="edge")
    border = (
        (padded[1:-1, 1:-1] != padded[:-2, 1:-1])
        | (padded[1:-1, 1:-1] != padded[2:, 1:-1])
        | (padded[1:-1, 1:-1] != padded[1:-1, :-2])
        | (padded[1:-1, 1:-1] != padded[1:-1, 2:])
    )
    assert not (changed & ~border).any()


# --- slide metadata -------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 5),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.sampled_from(["s0", "s1", "c", "y", "x", "z", "t", "scale", "translation", "0.4", "0.5"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def mutated(value):
    """`value` with any of its parts kept, mutated in turn, dropped (dict keys) or replaced by random JSON:
    metadata near enough to valid that parsing gets deep before it meets the damage."""
    if isinstance(value, dict):
        fields = st.fixed_dictionaries({k: mutated(v) for k, v in value.items()})
        inner = st.tuples(fields, st.sets(st.sampled_from(sorted(value)) if value else st.nothing())).map(
            lambda t: {k: v for k, v in t[0].items() if k not in t[1]}
        )
    elif isinstance(value, list):
        inner = st.tuples(*[mutated(v) for v in value]).map(list) if value else st.just([])
        inner = st.one_of(inner, inner.map(lambda items: items[:-1]), inner.map(lambda items: items + items[-1:]))
    else:
        inner = json_leaf
    return st.one_of(st.just(value), inner, json_value)


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def store(request, tmp_path_factory):
    """A real two-level slide with a label layer, and the metadata of its image, labels and layer groups,
    which each example replaces."""
    path = tmp_path_factory.mktemp(f"fuzz{request.param}") / "slide.zarr"
    labels = np.zeros((64, 64), np.uint8)
    labels[8:40, 8:40] = 1
    write_slide(path, np.full((3, 64, 64), 200, np.uint8), labels, 2.0, ngff=request.param, chunk=32, levels=2)
    groups = [path, path / "labels", path / "labels" / "truth"]
    return path, request.param, {g: read_attrs(g, request.param) for g in groups}


def read_attrs(group, ngff: str) -> dict:
    if ngff == "0.4":
        return json.loads((group / ".zattrs").read_text())
    return json.loads((group / "zarr.json").read_text())["attributes"]["ome"]


def write_attrs(group, ngff: str, attrs: dict) -> None:
    if ngff == "0.4":
        (group / ".zattrs").write_text(json.dumps(attrs))
    else:
        meta = json.loads((group / "zarr.json").read_text())
        meta["attributes"] = {"ome": attrs}
        (group / "zarr.json").write_text(json.dumps(meta))


def read_everything(path) -> None:
    """What every command does first: the slide, its layer list and a layer's metadata."""
    slide = open_slide(path)
    assert slide.levels and slide.axes and all(slide.pixel_size(i) > 0 for i in range(len(slide.levels)))
    assert len(slide.channels) == (slide.levels[0].shape[slide.axes.index("c")] if "c" in slide.axes else 1)
    for name in slide.label_names():
        info = open_labels(slide, name)
        assert all(isinstance(v, int) for v in info.properties) and all(len(c) == 3 for c in info.colors.values())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_metadata_is_read_or_refused_with_a_user_error(store, data):
    path, ngff, originals = store
    for group, original in originals.items():
        write_attrs(group, ngff, data.draw(mutated(original)))
    try:
        read_everything(path)
    except UserError:
        pass


def test_the_metadata_it_replaces_reads(store):
    """The fuzz writes where open_slide reads: the slide's own metadata, written back the same way, opens."""
    path, ngff, originals = store
    for group, original in originals.items():
        write_attrs(group, ngff, original)
    read_everything(path)
    assert open_slide(path).label_names() == ["truth"]
