#@ File (label="Slide (OME-Zarr folder)", style="directory") slide
#@ File (label="Model (.safetensors, or mouse: the shipped one)", value="mouse", required=false) model
#@ String (label="Label layer name", value="sebre") labels
#@ Float (label="Minimum score", value=0.3, min=0, max=1) min_score
#@ String (label="sebre command (full path unless on PATH)", value="sebre") sebre
#@output Integer count
"""SeBRe Segment (Jython): segment brain regions of an OME-Zarr slide with `sebre segment` and
open them in the ROI Manager. The #@ parameters put it in Fiji's menu, make it recordable and let
`ImageJ-linux64 --headless --run SeBRe_Segment.py "slide='...',model='...'"` drive it."""

import os
import subprocess

from ij import IJ
from ij.plugin.frame import RoiManager


def run_sebre(args):
    """Run sebre; return (exit code, stdout and stderr together)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.communicate()[0]
    return proc.returncode, output.decode("utf-8", "replace")


def error_line(output):
    """sebre's one-line error, else the last line it printed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or ["sebre printed nothing; check the sebre command path"])[-1]


slide_path = slide.getAbsolutePath().rstrip(os.sep)
base = os.path.splitext(os.path.basename(slide_path))[0]
rois = os.path.join(os.path.dirname(slide_path), "%s-%s-RoiSet.zip" % (base, labels))
# a checkpoint the user chose, or a shipped model's name (the default "mouse" is no file)
model_arg = model.getAbsolutePath() if model is not None and model.isFile() else (model.getName() if model else "mouse")
code, output = run_sebre([sebre, "segment", slide_path, "--model", model_arg,
                          "--labels", labels, "--rois", rois, "--min-score", str(min_score), "--overwrite"])
if code != 0 or not os.path.isfile(rois):
    IJ.log("SeBRe: error: " + error_line(output))
    count = 0
else:
    manager = RoiManager.getRoiManager()
    manager.reset()
    manager.runCommand("Open", rois)
    count = manager.getCount()
    IJ.log("SeBRe: %d ROIs" % count)
    for i in range(count):
        IJ.log(manager.getName(i))
