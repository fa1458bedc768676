"""OME-NGFF 0.4 and 0.5 as sebre reads and writes them: one format object per version.

The two versions hold the same metadata in different places. 0.4 lives on zarr v2, with the NGFF
metadata at the top of each group's .zattrs and chunk keys separated by "/"; 0.5 lives on zarr v3,
with the metadata under "ome" in zarr.json, a version on every group (the labels group included),
and arrays that name their dimensions. Every such difference is a method of `NgffV04` or `NgffV05`,
in the manner of ome-zarr-py's format classes, so the modules that write a store ask the slide's
format object (`Slide.ngff`, that is `ngff_format(slide.version)`) rather than test the version.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import zarr
from ome_zarr.format import Format, FormatV04, FormatV05


def ome_attrs(group: zarr.Group) -> dict:
    """A group's NGFF metadata, wherever its version keeps it.

    Parameters
    ----------
    group : zarr.Group
        An image, labels or label-layer group of either version.

    Returns
    -------
    dict
        A shallow copy: setting its keys leaves the group as it is.

    Notes
    -----
    Equals ``dict(group.attrs["ome"])`` when the group has an "ome" attribute that is an object (0.5),
    ``{}`` when it has one that is not, and ``dict(group.attrs)`` otherwise (0.4). The place is found
    from the attributes, not from a format object: the version is itself read from this metadata.
    """
    attrs = dict(group.attrs)
    if "ome" not in attrs:
        return attrs
    return dict(attrs["ome"]) if isinstance(attrs["ome"], dict) else {}


class NgffFormat(ABC):
    """What a store of one NGFF version needs that the other does not: see `NgffV04`, `NgffV05`."""

    version: ClassVar[str]
    zarr_format: ClassVar[int]  # the zarr format a store of this version is written in

    @abstractmethod
    def writer_format(self) -> Format:
        """ome-zarr-py's format object of this version, for its writer functions (`fmt=`)."""

    @abstractmethod
    def array_options(self, axes: str) -> dict:
        """Keyword arguments of ``zarr.Group.create_array`` for a new array with these axes."""

    @abstractmethod
    def set_attrs(self, group: zarr.Group, attrs: dict) -> None:
        """Write a group's NGFF metadata in this version's place (what `ome_attrs` reads back)."""

    @abstractmethod
    def labels_attrs(self, attrs: dict) -> dict:
        """The labels group's metadata as this version writes it, from its NGFF metadata `attrs`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NgffV04(NgffFormat):
    """NGFF 0.4: zarr v2, the metadata at the top of .zattrs, chunk keys such as ``0/3/1``."""

    version = "0.4"
    zarr_format = 2

    def writer_format(self) -> Format:
        return FormatV04()

    def array_options(self, axes: str) -> dict:
        """Keyword arguments of ``create_array`` for a new array.

        Notes
        -----
        Equals ``{"chunk_key_encoding": {"name": "v2", "separator": "/"}}`` whatever the axes: the
        chunk keys ome-zarr-py gives 0.4 arrays (zarr v2 has no dimension names).
        """
        return {"chunk_key_encoding": {"name": "v2", "separator": "/"}}

    def set_attrs(self, group: zarr.Group, attrs: dict) -> None:
        """Write a group's NGFF metadata.

        Notes
        -----
        Equals ``group.attrs.update(attrs)``: keys not in `attrs` are kept.
        """
        group.attrs.update(attrs)

    def labels_attrs(self, attrs: dict) -> dict:
        """The labels group's metadata.

        Notes
        -----
        Equals `attrs`: in 0.4 the version is in each layer's multiscales, not on the labels group.
        """
        return attrs


class NgffV05(NgffFormat):
    """NGFF 0.5: zarr v3, the metadata under "ome" in zarr.json, arrays with dimension names."""

    version = "0.5"
    zarr_format = 3

    def writer_format(self) -> Format:
        return FormatV05()

    def array_options(self, axes: str) -> dict:
        """Keyword arguments of ``create_array`` for a new array with these axes.

        Notes
        -----
        Equals ``{"dimension_names": list(axes)}``; chunk keys are zarr v3's default (``c/0/3/1``).
        """
        return {"dimension_names": list(axes)}

    def set_attrs(self, group: zarr.Group, attrs: dict) -> None:
        """Write a group's NGFF metadata.

        Notes
        -----
        Equals ``group.attrs["ome"] = attrs``: the whole "ome" object is replaced.
        """
        group.attrs["ome"] = attrs

    def labels_attrs(self, attrs: dict) -> dict:
        """The labels group's metadata, with the version that 0.5 wants on every NGFF group.

        Notes
        -----
        Equals ``{**attrs, "version": "0.5"}``. ome-zarr-py's writer leaves the version off the
        labels group, and validators (ome-zarr-models) refuse a 0.5 labels group without it.
        """
        return {**attrs, "version": self.version}


FORMATS: dict[str, NgffFormat] = {f.version: f for f in (NgffV04(), NgffV05())}
VERSIONS = tuple(FORMATS)  # the NGFF versions sebre reads and writes


def ngff_format(version: str) -> NgffFormat:
    """The format object of NGFF `version`, one of `VERSIONS`; a ValueError for any other."""
    if version not in FORMATS:
        raise ValueError(f"NGFF version {version!r} is not one of {', '.join(VERSIONS)}")
    return FORMATS[version]
