"""The JVM bridge: regions into a running ImageJ, a TIFF overlay, or checked by ImageJ itself.

Two routes reach the same ImageJ 1.x classes (ij.gui.*, ij.io.*, RoiManager):
pyimagej's gateway for users with a Fiji.app, or plain ``ij.jar`` through scyjava
(Debian's ``imagej`` package, or Fiji's ``jars/ij-1.x.jar``). A process can start
one JVM only, so the first call decides the route and later calls reuse it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jpype
import numpy as np
import scyjava

from .outlines import Region
from .rois import atomic_output, roi_group, roi_properties, roi_rings

JAR_ENV = "SEBRE_IJ_JAR"
_SYSTEM_JARS = (Path("/usr/share/java/ij.jar"), Path("/usr/share/imagej/ij.jar"))
_FIJI_DIRS = (
    Path.home() / "Fiji.app",
    Path.home() / "Applications" / "Fiji.app",
    Path("/Applications/Fiji.app"),
    Path("/opt/Fiji.app"),
    Path("/usr/local/Fiji.app"),
)
_NO_JAR = (
    "ImageJ 1.x (ij.jar) not found; install it (Debian/Ubuntu: apt-get install imagej), "
    f"set {JAR_ENV}=/path/to/ij.jar, or pass fiji=/path/to/Fiji.app"
)


def ij_jar(path: str | os.PathLike | None = None) -> Path:
    """Locate ij.jar: ``path``, else $SEBRE_IJ_JAR, else system and Fiji.app locations."""
    explicit = path if path is not None else os.environ.get(JAR_ENV)
    if explicit:
        jar = Path(explicit).expanduser()
        if not jar.is_file():
            raise FileNotFoundError(
                f"{jar}: no such ImageJ jar; pass the path of ij.jar (Fiji: Fiji.app/jars/ij-1.x.jar) "
                f"as the jar argument or in {JAR_ENV}"
            )
        return jar
    for jar in _candidate_jars():
        if jar.is_file():
            return jar
    raise FileNotFoundError(_NO_JAR)


def _candidate_jars():
    yield from _SYSTEM_JARS
    for fiji in _FIJI_DIRS:
        yield from sorted((fiji / "jars").glob("ij-*.jar"), reverse=True)


def start_imagej(jar: str | os.PathLike | None = None, fiji: str | os.PathLike | None = None, headless: bool = True):
    """Start ImageJ in this process, or reuse the JVM that is already running.

    With ``fiji`` (a Fiji.app directory or a pyimagej endpoint) this is
    ``imagej.init`` and returns its ``ij`` gateway; otherwise the JVM starts with
    ij.jar on the classpath (system Java only, never a download) and the
    ``ij.IJ`` class is returned as the handle. ``headless`` is fixed at the first
    start: the ROI Manager needs ``headless=False`` and a display (``xvfb-run -a``).
    """
    if fiji is not None:
        return _fiji_gateway(str(fiji), "headless" if headless else "interactive")
    if not scyjava.jvm_started():
        scyjava.config.set_java_constraints(fetch="never")
        scyjava.config.add_classpath(str(ij_jar(jar)))
        if headless:
            scyjava.config.add_option("-Djava.awt.headless=true")
        scyjava.start_jvm()
    try:
        return scyjava.jimport("ij.IJ")
    except Exception as exc:  # jpype reports a missing class in several ways
        raise RuntimeError(f"the running JVM has no ImageJ 1.x classes ({exc}); {_NO_JAR}") from None


@functools.cache
def _fiji_gateway(fiji: str, mode: str):
    """pyimagej's gateway, made once: imagej.init cannot run twice in a process."""
    import imagej

    scyjava.config.set_java_constraints(fetch="never")
    return imagej.init(fiji, mode=mode)


def _jfloats(values: np.ndarray):
    return jpype.JArray(jpype.JFloat)(np.ascontiguousarray(values, dtype=np.float32))


def java_roi(region: Region, *, position: int | None = None, groups: bool = False):
    """The region as an ImageJ ROI object, matching what write_roiset stores:
    a float PolygonRoi for one part without holes, else a ShapeRoi (even-odd path)."""
    simple, rings = roi_rings(region)
    roi = _polygon_roi(rings[0]) if simple else _shape_roi(rings)
    roi.setName(region.name)
    roi.setStrokeColor(scyjava.jimport("java.awt.Color")(*map(int, region.color)))
    if groups:  # after the colour, as RoiDecoder does: ImageJ then shows the group colour
        roi.setGroup(roi_group(region))
    if position or region.position:
        roi.setPosition(int(position or region.position))
    for key, value in roi_properties(region).items():
        roi.setProperty(key, value)
    return roi


def _polygon_roi(ring: np.ndarray):
    FloatPolygon = scyjava.jimport("ij.process.FloatPolygon")
    PolygonRoi = scyjava.jimport("ij.gui.PolygonRoi")
    Roi = scyjava.jimport("ij.gui.Roi")
    polygon = FloatPolygon(_jfloats(ring[:, 0]), _jfloats(ring[:, 1]), len(ring))
    return PolygonRoi(polygon, Roi.POLYGON)


def _shape_roi(rings: list[np.ndarray]):
    Path2D = scyjava.jimport("java.awt.geom.Path2D")
    ShapeRoi = scyjava.jimport("ij.gui.ShapeRoi")
    path = Path2D.Double(Path2D.WIND_EVEN_ODD)
    for ring in rings:
        (x0, y0), *rest = ring.tolist()
        path.moveTo(x0, y0)
        for x, y in rest:
            path.lineTo(x, y)
        path.closePath()
    return ShapeRoi(path)


def push_to_roi_manager(regions: list[Region], image=None, *, position: int | None = None, groups: bool = False) -> int:
    """Add the regions to the ROI Manager of the running ImageJ; returns how many.

    ``image`` (an ij.ImagePlus) ties the ROIs to that image. The ROI Manager is a
    window: without a display use write_roiset() or save_overlay_tiff() instead.
    """
    if scyjava.jimport("java.awt.GraphicsEnvironment").isHeadless():
        raise RuntimeError(
            "the ImageJ ROI Manager needs a display but this JVM is headless; start with "
            "start_imagej(headless=False) under a display (e.g. `xvfb-run -a`), or use "
            "write_roiset() / save_overlay_tiff() instead"
        )
    manager = scyjava.jimport("ij.plugin.frame.RoiManager").getRoiManager()
    for region in regions:
        roi = java_roi(region, position=position, groups=groups)
        if image is None:
            manager.addRoi(roi)
        else:
            manager.add(image, roi, -1)
    return len(regions)


def read_roi_manager() -> list[dict]:
    """The ROIs in the ROI Manager as dicts (see roi_to_dict); empty when none is open."""
    manager = scyjava.jimport("ij.plugin.frame.RoiManager").getInstance2()
    if manager is None:
        return []
    return [roi_to_dict(roi) for roi in manager.getRoisAsArray()]


def roi_to_dict(roi) -> dict[str, Any]:
    """Plain-Python view of an ImageJ ROI: name, type, group, colour, position,
    properties, float vertices (getFloatPolygon), rings (one per sub-path of a
    composite ROI) and float bounds (x, y, width, height)."""
    color = roi.getStrokeColor()
    bounds = roi.getFloatBounds()
    name = roi.getName()
    parts = roi.getRois() if roi.getType() == roi.COMPOSITE else [roi]
    return {
        "name": None if name is None else str(name),
        "type": str(roi.getTypeAsString()),
        "group": int(roi.getGroup()),
        "color": None if color is None else (int(color.getRed()), int(color.getGreen()), int(color.getBlue())),
        "position": int(roi.getPosition()),
        "properties": _parse_properties(roi.getProperties()),
        "coordinates": _float_polygon(roi),
        "rings": [_float_polygon(part) for part in parts],
        "bounds": (float(bounds.getX()), float(bounds.getY()), float(bounds.getWidth()), float(bounds.getHeight())),
    }


def _float_polygon(roi) -> np.ndarray:
    polygon = roi.getFloatPolygon()
    n = int(polygon.npoints)
    return np.column_stack((np.asarray(polygon.xpoints[:n], float), np.asarray(polygon.ypoints[:n], float)))


def _parse_properties(text) -> dict[str, str]:
    """ImageJ keeps ROI properties as "key: value" lines."""
    lines = str(text).splitlines() if text is not None else []
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def decode_roiset_with_imagej(path: str | os.PathLike) -> list[dict]:
    """Read a RoiSet.zip the way ImageJ's ROI Manager does (java.util.zip + RoiDecoder)
    and describe each ROI with roi_to_dict: proof that real ImageJ reads our files."""
    FileInputStream = scyjava.jimport("java.io.FileInputStream")
    ZipInputStream = scyjava.jimport("java.util.zip.ZipInputStream")
    RoiDecoder = scyjava.jimport("ij.io.RoiDecoder")
    rois = []
    stream = ZipInputStream(FileInputStream(str(path)))
    try:
        entry = stream.getNextEntry()
        while entry is not None:
            name = str(entry.getName())
            if name.endswith(".roi"):
                roi = RoiDecoder(_read_entry(stream), name).getRoi()
                if roi is None:
                    raise ValueError(f"{path}: ImageJ cannot decode member {name!r}")
                rois.append(roi_to_dict(roi))
            entry = stream.getNextEntry()
    finally:
        stream.close()
    return rois


def _read_entry(stream):
    """The current zip entry's bytes as a Java byte[] (portable to Java 8)."""
    ByteArrayOutputStream = scyjava.jimport("java.io.ByteArrayOutputStream")
    out = ByteArrayOutputStream()
    buffer = scyjava.jarray("b", 65536)
    n = stream.read(buffer, 0, len(buffer))
    while n > 0:
        out.write(buffer, 0, n)
        n = stream.read(buffer, 0, len(buffer))
    return out.toByteArray()


def save_overlay_tiff(
    image: str | os.PathLike | np.ndarray, regions: list[Region], out_path: str | os.PathLike, *, groups: bool = False
) -> Path:
    """Save ``image`` as an ImageJ TIFF with the regions as its Overlay (works headless).

    ``image`` is a file ImageJ opens or a (H, W) / (planes, H, W) array, in the
    same pixel frame as the region polygons (level 0 unless you scaled them).
    """
    IJ = scyjava.jimport("ij.IJ")
    if isinstance(image, (str, os.PathLike)):
        if not Path(image).is_file():  # ImageJ would report it in a dialog, which hangs under Xvfb
            raise FileNotFoundError(f"{image}: no such image file")
        imp = IJ.openImage(str(image))
    else:
        imp = _imageplus(np.asarray(image))
    if imp is None:
        raise ValueError(f"{image}: ImageJ cannot open this image; convert it to TIFF first")
    overlay = scyjava.jimport("ij.gui.Overlay")()
    for region in regions:
        overlay.add(java_roi(region, groups=groups))
    imp.setOverlay(overlay)
    out_path = Path(out_path)
    with atomic_output(out_path, suffix=".part.tif") as tmp:  # IJ.saveAsTiff appends .tif otherwise
        if not IJ.saveAsTiff(imp, str(tmp)):
            raise OSError(f"{out_path}: ImageJ could not write the TIFF")
    return out_path


def _imageplus(array: np.ndarray):
    """An ImagePlus (one plane or a stack) from uint8, uint16 or float planes."""
    planes = array[None] if array.ndim == 2 else array
    if planes.ndim != 3:
        raise ValueError(f"image must be (H, W) or (planes, H, W), got shape {array.shape}")
    _, height, width = planes.shape
    stack = scyjava.jimport("ij.ImageStack")(width, height)
    for plane in planes:
        stack.addSlice(_processor(plane))
    return scyjava.jimport("ij.ImagePlus")("sebre-ij", stack)


def _processor(plane: np.ndarray):
    height, width = plane.shape
    flat = np.ascontiguousarray(plane).ravel()
    if plane.dtype == np.uint8:
        ByteProcessor = scyjava.jimport("ij.process.ByteProcessor")
        return ByteProcessor(width, height, jpype.JArray(jpype.JByte)(flat.view(np.int8)))
    if plane.dtype == np.uint16:
        ShortProcessor = scyjava.jimport("ij.process.ShortProcessor")
        return ShortProcessor(width, height, jpype.JArray(jpype.JShort)(flat.view(np.int16)), None)
    FloatProcessor = scyjava.jimport("ij.process.FloatProcessor")
    return FloatProcessor(width, height, _jfloats(flat))
