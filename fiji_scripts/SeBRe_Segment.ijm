// SeBRe Segment: segment brain regions of an OME-Zarr slide with `sebre segment`, then open the
// regions (RoiSet.zip) in the ROI Manager.
//
// Interactive: asks for its parameters in a dialog. Batch (ImageJ -batch, Fiji --headless -batch):
// takes them as the macro argument, e.g.
//   "slide=/data/slide.zarr model=/data/model.safetensors labels=sebre sebre=/path/to/.venv/bin/sebre min_score=0.3"
// model= is a checkpoint written by `sebre train`, or a shipped model's name (default: mouse).
// (bracket values holding spaces: slide=[/my data/slide.zarr]). rois= sets where RoiSet.zip goes
// (default: next to the slide). Errors print one line starting "SeBRe: error:" and stop the macro.

var batch = false;
arg = getArgument();
batch = (arg != "");
if (batch) {
	slide = value(arg, "slide", "");
	model = value(arg, "model", "mouse");
	labels = value(arg, "labels", "sebre");
	sebre = value(arg, "sebre", "sebre");
	minScore = value(arg, "min_score", "0.3");
	rois = value(arg, "rois", "");
} else {
	Dialog.create("SeBRe Segment");
	Dialog.addDirectory("Slide (OME-Zarr folder)", "");
	Dialog.addFile("Model (.safetensors, or mouse: the shipped one)", "mouse");
	Dialog.addString("Label layer name", "sebre");
	Dialog.addNumber("Minimum score", 0.3);
	Dialog.addFile("sebre command", "sebre");
	Dialog.show();
	slide = Dialog.getString();
	model = Dialog.getString();
	labels = Dialog.getString();
	minScore = "" + Dialog.getNumber();
	sebre = Dialog.getString();
	rois = "";
}
if (endsWith(slide, "/") || endsWith(slide, "\\")) slide = substring(slide, 0, lengthOf(slide) - 1);
if (model == "") model = "mouse";
if (slide == "") fail("give slide=... (the OME-Zarr slide) and model=... (a sebre checkpoint, or mouse: the shipped one)");
if (rois == "") rois = File.getParent(slide) + File.separator + File.getNameWithoutExtension(slide) + "-" + labels + "-RoiSet.zip";

if (File.exists(rois)) dummy = File.delete(rois);
// exec() takes each argument apart (no quoting trouble) but returns stdout only, and no exit code:
// a shell folds stderr in (where sebre prints its one-line error) and appends the code.
if (startsWith(getInfo("os.name"), "Windows"))
	output = exec("cmd", "/c", sebre, "segment", slide, "--model", model, "--labels", labels, "--rois", rois,
		"--min-score", minScore, "--overwrite", "2>&1");
else
	output = exec("sh", "-c", "\"$0\" \"$@\" 2>&1; echo SEBRE_EXIT=$?", sebre, "segment", slide, "--model", model,
		"--labels", labels, "--rois", rois, "--min-score", minScore, "--overwrite");
if (!File.exists(rois)) fail(error_line(output));

roiManager("reset");
roiManager("Open", rois);
n = roiManager("count");
print("SeBRe: " + n + " ROIs");
for (i = 0; i < n; i++) print(call("ij.plugin.frame.RoiManager.getName", i));
print("SeBRe: RoiSet " + rois);

// The line that says what went wrong: sebre's own "error:" line, else the last line of output.
function error_line(output) {
	lines = split(output, "\n");
	last = "sebre printed nothing; check the sebre= path (the sebre command of the sebre-ij install)";
	for (i = 0; i < lines.length; i++) {
		line = String.trim(lines[i]);
		if (indexOf(line, "error:") >= 0) return line;
		if (line != "" && !startsWith(line, "SEBRE_EXIT=")) last = line;
	}
	return last;
}

function value(options, key, default) {
	return call("ij.Macro.getValue", options, key, default);
}

function fail(message) {
	print("SeBRe: error: " + message);
	if (!batch) showMessage("SeBRe", message);
	exit;
}
