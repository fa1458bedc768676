// SeBRe Train: train a sebre model on the open image, with the ROI Manager's ROIs as annotations.
// Each ROI's name is its class ("cortex", or "s1-cortex" as `sebre segment` names them).
// Saves the ROIs as <image>-RoiSet.zip next to the image (and the image as TIFF first if it has
// no file), then runs `sebre train IMAGE --rois ROISET --out MODEL`. Parameters by dialog, or as
// the macro argument: "model=/path/model.safetensors sebre=/path/to/sebre steps=400 pixel_size=16 pixel_size_in=2".

var batch = false;
arg = getArgument();
batch = (arg != "");
if (nImages == 0) fail("open the annotated image first");
if (roiManager("count") == 0) fail("outline the regions in the ROI Manager (named by class, e.g. cortex) first");
dir = getDirectory("image");
title = File.getNameWithoutExtension(getTitle());
if (dir == "") dir = getDirectory("temp");
getPixelSize(unit, pw, ph);
known = "";
if (unit == "micron" || unit == "um" || unit == fromCharCode(181) + "m") known = "" + pw;
if (batch) {
	model = value(arg, "model", dir + title + ".safetensors");
	sebre = value(arg, "sebre", "sebre");
	steps = value(arg, "steps", "400");
	pixelSize = value(arg, "pixel_size", "16");
	pixelSizeIn = value(arg, "pixel_size_in", known);
} else {
	Dialog.create("SeBRe Train");
	Dialog.addString("Model file to write", dir + title + ".safetensors", 40);
	Dialog.addNumber("Training steps", 400);
	Dialog.addNumber("Model µm/px", 16);
	Dialog.addString("Image µm/px (blank: from the file)", known);
	Dialog.addFile("sebre command", "sebre");
	Dialog.show();
	model = Dialog.getString();
	steps = "" + Dialog.getNumber();
	pixelSize = "" + Dialog.getNumber();
	pixelSizeIn = Dialog.getString();
	sebre = Dialog.getString();
}
if (pixelSizeIn == "") fail("the image has no pixel size in µm; set it (Image > Properties) or give pixel_size_in=");

image = getDirectory("image") + getInfo("image.filename");
if (getDirectory("image") == "" || !endsWith(toLowerCase(image), ".tif")) {
	image = dir + title + ".tif";
	saveAs("Tiff", image);
}
roiset = dir + title + "-RoiSet.zip";
roiManager("Save", roiset);

print("SeBRe: training on " + image + " with " + roiManager("count") + " ROIs (this takes a while)");
if (startsWith(getInfo("os.name"), "Windows"))
	output = exec("cmd", "/c", sebre, "train", image, "--rois", roiset, "--out", model, "--steps", steps,
		"--pixel-size", pixelSize, "--pixel-size-in", pixelSizeIn, "2>&1");
else
	output = exec("sh", "-c", "\"$0\" \"$@\" 2>&1; echo SEBRE_EXIT=$?", sebre, "train", image, "--rois", roiset,
		"--out", model, "--steps", steps, "--pixel-size", pixelSize, "--pixel-size-in", pixelSizeIn);
if (indexOf(output, "wrote ") < 0) fail(error_line(output));  // `sebre train` says "wrote MODEL: ..." when done
print("SeBRe: wrote " + model);

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
