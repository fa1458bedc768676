"""cli.py: the library's parameters said as flags, one-line errors with exit code 2, and each
subcommand's flags reaching the API as its options."""

import logging

import pytest
from typer.testing import CliRunner

from sebre_ij import cli
from sebre_ij.cli import app
from sebre_ij.cli_support import as_flags
from sebre_ij.errors import UserError


@pytest.mark.parametrize(
    "message, said",
    [
        (
            "pass overwrite=True to replace it or labels=NAME for another",
            "pass --overwrite to replace it or --labels NAME for another",
        ),
        ("resume=True and overwrite=True contradict each other", "--resume and --overwrite contradict each other"),
        ("jobs= and cores= must be 1 or more", "--jobs and --cores must be 1 or more"),
        ("or tile_size=256", "or --tile-size 256"),
        ("mode='cells' is not one of region, instance", "--mode 'cells' is not one of region, instance"),
        ("pass pixel_size_in=UM (µm per pixel)", "pass --pixel-size-in UM (µm per pixel)"),
        ("roi_groups=False", "--no-roi-groups"),
        ("slide.zarr/labels/sebre: the label-value of x=1", "slide.zarr/labels/sebre: the label-value of x=1"),
    ],
)
def test_library_parameters_are_said_as_flags(message, said):
    assert as_flags(message) == said


def test_a_user_error_is_one_line_with_flags_and_exit_code_2(monkeypatch):
    def refuse(*args, **kwargs):
        raise UserError("slide.zarr: label layer 'sebre' exists; pass overwrite=True to replace it\nsecond line")

    monkeypatch.setattr("sebre_ij.segment.segment", refuse)
    result = CliRunner().invoke(app, ["segment", "slide.zarr", "--model", "m.safetensors"])
    assert result.exit_code == 2
    assert result.stderr == "sebre: error: slide.zarr: label layer 'sebre' exists; pass --overwrite to replace it\n"


def test_flags_reach_the_api_as_options(monkeypatch):
    seen = {}

    def record(slide, model, options, exports, cluster, stop=None):
        seen.update(slide=slide, model=model, options=options, exports=exports, cluster=cluster)
        raise UserError("stop here")

    monkeypatch.setattr("sebre_ij.segment.segment", record)
    CliRunner().invoke(
        app,
        [
            "segment",
            "s.zarr",
            "--model",
            "m.safetensors",
            "--labels",
            "mine",
            "--tta",
            "--batch-size",
            "auto",
            "--rois",
            "r.zip",
            "--roi-level",
            "2",
            "--no-roi-groups",
            "--workers",
            "2",
            "--mode",
            "instance",
        ],
    )
    options, exports, cluster = seen["options"], seen["exports"], seen["cluster"]
    assert (options.labels, options.tta, options.batch_size, options.mode) == ("mine", True, "auto", "instance")
    assert (str(exports.rois), exports.roi_level, exports.roi_groups, exports.geojson) == ("r.zip", 2, False, None)
    assert cluster.workers == 2 and not cluster.scheduler


def test_a_bad_batch_size_is_refused_before_the_api_is_called(monkeypatch):
    monkeypatch.setattr("sebre_ij.segment.segment", lambda *a, **k: pytest.fail("called"))
    result = CliRunner().invoke(app, ["segment", "s.zarr", "--model", "m.safetensors", "--batch-size", "0"])
    assert result.exit_code == 2 and "--batch-size '0'" in result.stderr


def test_the_package_logs_to_stderr_through_rich_once_the_command_runs():
    CliRunner().invoke(app, ["--debug", "info", "/nowhere.zarr"])
    logger = logging.getLogger("sebre_ij")
    assert logger.level == logging.DEBUG and any(type(h).__name__ == "RichHandler" for h in logger.handlers)
    assert cli.state["debug"]
