"""Section folders: the shared-data layout (tiny sets written here, and one real GLTa section when
the shared data is present), SeBRe's original layout, mixed pixel sizes, the validation split and
`sebre train FOLDER`."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import SEBRE
from PIL import Image

from sebre_ij.checkpoint import read_card
from sebre_ij.datasets import (
    SEBRE_CLASSES,
    Example,
    Split,
    folder_layout,
    sebre_examples,
    shared_examples,
    shared_sections,
    split_by_section,
)
from sebre_ij.errors import UserError
from sebre_ij.readers import load_class_table

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEBRE_DATA", ROOT.parent / "shared" / "data"))
CLASSES = [
    {"index": 0, "name": "background", "rgb": [0, 0, 0]},
    {"index": 1, "name": "cortex", "rgb": [230, 90, 60]},
    {"index": 2, "name": "thalamus", "rgb": [0, 120, 60]},
]


def quadrants(h, w):
    """Class map: cortex in the top half, thalamus in the bottom-right quarter."""
    classes = np.zeros((h, w), np.uint8)
    classes[: h // 2] = 1
    classes[h // 2 :, w // 2 :] = 2
    return classes


def write_set(root, sizes=(2.0, 4.0), shape=(8, 12)):
    """A shared-data set: one RGB section per pixel size, all of the same pixels."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    sections = []
    for i, size in enumerate(sizes):
        rgb = np.full((*shape, 3), 40 * (i + 1), np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"s{i}.png")
        Image.fromarray(quadrants(*shape)).save(root / "labels" / f"s{i}.png")
        sections.append({"image": f"images/s{i}.png", "labels": f"labels/s{i}.png", "pixel_size_um": size})
    (root / "sections.json").write_text(json.dumps({"classes": CLASSES, "sections": sections}))
    return root


def test_shared_layout_reads_sections_at_their_own_pixel_size(tmp_path):
    root = write_set(tmp_path / "set")
    assert folder_layout(root) == "shared"
    found = shared_examples(root)
    examples, table, channels = found.examples, found.table, found.channels
    assert table.names == ["background", "cortex", "thalamus"] and table.colors[2] == (0, 120, 60)
    assert channels == ["R", "G", "B"]
    assert [(e.name, e.pixel_size_um) for e in examples] == [("s0", 2.0), ("s1", 4.0)]
    first = examples[0]
    assert first.image.dtype == np.float32 and first.image.shape == (3, 8, 12)
    assert first.image.max() == pytest.approx(40 / 255)
    np.testing.assert_array_equal(first.classes, quadrants(8, 12))


def test_mixed_pixel_sizes_are_brought_to_one(tmp_path):
    examples = shared_examples(write_set(tmp_path / "set"), pixel_size_um=4.0).examples
    assert [e.pixel_size_um for e in examples] == [4.0, 4.0]
    # 2 µm/px halves (8 x 12 -> 4 x 6), 4 µm/px stays; labels by nearest neighbour keep their values
    assert examples[0].classes.shape == (4, 6) and examples[1].classes.shape == (8, 12)
    np.testing.assert_array_equal(examples[0].classes, quadrants(4, 6))
    assert examples[0].image.shape == (3, 4, 6)
    np.testing.assert_allclose(examples[0].image, 40 / 255, atol=1e-6)  # a flat image stays flat


def test_bad_set_files_are_one_line_errors(tmp_path):
    root = write_set(tmp_path / "set")
    data = json.loads((root / "sections.json").read_text())
    data["sections"][0]["labels"] = "../../etc/passwd"
    (root / "sections.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"sections.json: '../../etc/passwd' points outside"):
        shared_examples(root)
    (root / "sections.json").write_text("{not json")
    with pytest.raises(UserError, match=r"sections.json: cannot read this JSON file"):
        shared_examples(root)
    root = write_set(tmp_path / "other")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "labels" / "s1.png")
    with pytest.raises(UserError, match=r"s1.png: \(5, 5\) pixels but the image has \(8, 12\)"):
        shared_examples(root)
    Image.fromarray(np.full((8, 12), 7, np.uint8)).save(root / "labels" / "s1.png")
    with pytest.raises(UserError, match=r"s1.png: class 7 is not in the class table"):
        shared_examples(root)


@pytest.fixture
def glta():
    if not (DATA / "glta" / "sections.json").is_file():
        pytest.skip(f"shared data not found at {DATA} (set SEBRE_DATA to the folder holding glta/)")
    return DATA / "glta"


def test_one_real_glta_section(glta, tmp_path):
    """One real section through a set folder of its own (links, not copies, to the shared files)."""
    index = shared_sections(glta)
    table, sections = index.table, index.sections
    assert table.names[1:4] == ["cortex", "hippocampus", "olfactory"] and len(sections) == 23
    entry = next(s for s in json.loads((glta / "sections.json").read_text())["sections"] if "glta_s044" in s["image"])
    root = tmp_path / "one"
    for kind in ("image", "labels"):
        (root / entry[kind]).parent.mkdir(parents=True)
        (root / entry[kind]).symlink_to(glta / entry[kind])
    (root / "sections.json").write_text(
        json.dumps({"classes": json.loads((glta / "sections.json").read_text())["classes"], "sections": [entry]})
    )
    found = shared_examples(root)
    [section], table, channels = found.examples, found.table, found.channels
    assert section.image.shape == (3, 670, 1024) and channels == ["R", "G", "B"]
    present = {table.names[c] for c in np.unique(section.classes) if c}
    assert present == set(entry["regions"])
    [coarse] = shared_examples(root, pixel_size_um=25.0).examples
    factor = entry["pixel_size_um"] / 25.0
    assert coarse.classes.shape == (round(670 * factor), round(1024 * factor))
    assert {table.names[c] for c in np.unique(coarse.classes) if c} <= present


def write_sebre(root, n=2, shape=(10, 16)):
    """SeBRe's folders: images/section_img_N.jpg and masks/section_masks_N/ with one mask per class."""
    (root / "mrcnn_train_dataset_images").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((*shape, 3), 200, np.uint8)).save(
            root / "mrcnn_train_dataset_images" / f"section_img_{i}.jpg"
        )
        masks = root / "mrcnn_train_dataset_masks" / f"section_masks_{i}"
        masks.mkdir(parents=True)
        classes = quadrants(*shape)
        for cls, tag in ((1, "CTX_m_1"), (2, "TH_m2")):  # both spellings SeBRe's files use
            Image.fromarray(((classes == cls) * 255).astype(np.uint8)).save(masks / f"section_masks_{i}_{tag}.png")
    return root


def test_sebre_layout_reads_masks_into_class_maps(tmp_path):
    root = write_sebre(tmp_path / "sebre")
    assert folder_layout(root) == "sebre"
    found = sebre_examples(root)
    examples, table, channels = found.examples, found.table, found.channels
    assert table.names == ["background", *SEBRE_CLASSES] and channels == ["R", "G", "B"]
    assert [e.name for e in examples] == ["section_img_0", "section_img_1"]
    assert examples[0].pixel_size_um is None  # a JPEG does not say
    np.testing.assert_array_equal(examples[0].classes, quadrants(10, 16))
    assert examples[0].image.shape == (3, 10, 16)


def test_sebre_layout_with_a_class_table_and_a_pixel_size(tmp_path):
    root = write_sebre(tmp_path / "sebre")
    (tmp_path / "classes.json").write_text(json.dumps({"classes": CLASSES}))
    found = sebre_examples(root, 4.0, load_class_table(tmp_path / "classes.json"), pixel_size_in=2.0)
    examples, table = found.examples, found.table
    assert table.names == ["background", "cortex", "thalamus"]
    np.testing.assert_array_equal(examples[0].classes, quadrants(5, 8))
    with pytest.raises(UserError, match=r"section_img_0 is unknown; pass pixel_size_in=UM"):
        sebre_examples(root, 4.0)
    (tmp_path / "classes.json").write_text(json.dumps({"classes": CLASSES[:2]}))
    with pytest.raises(UserError, match=r"section_masks_0_TH_m2.png: class id 2 is not in the class table"):
        sebre_examples(root, None, load_class_table(tmp_path / "classes.json"))


def test_split_by_section():
    examples = [Example(np.zeros((1, 2, 2), np.float32), np.ones((2, 2), np.uint8), f"s{i}") for i in range(10)]
    split = split_by_section(examples, ["s3", "s7"])
    train, val = split.kept, split.held_out
    assert [e.name for e in val] == ["s3", "s7"] and len(train) == 8
    val_a = split_by_section(examples, 0.2, seed=1).held_out
    val_b = split_by_section(examples, 0.2, seed=1).held_out
    assert len(val_a) == 2 and [e.name for e in val_a] == [e.name for e in val_b]
    assert split_by_section(examples, None) == Split(examples, [])
    with pytest.raises(UserError, match=r"validation sections \['s99'\] are not in the data"):
        split_by_section(examples, ["s99"])


def test_train_on_a_folder_holds_out_validation_sections(tmp_path):
    root = write_set(tmp_path / "set", sizes=(8.0, 8.0, 8.0), shape=(64, 64))
    model = tmp_path / "m.safetensors"
    run = subprocess.run(
        [
            *SEBRE,
            "train",
            str(root),
            "--out",
            str(model),
            "--steps",
            "2",
            "--pixel-size",
            "16",
            "--tile-size",
            "64",
            "--overlap",
            "16",
            "--batch-size",
            "1",
            "--val-sections",
            "s2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    card = read_card(model)
    assert card.classes == ["background", "cortex", "thalamus"] and card.training["val_sections"] == ["s2"]
    assert "held out for validation: s2" in run.stdout
    bad = subprocess.run(
        [*SEBRE, "train", str(tmp_path), "--out", str(model)], capture_output=True, text=True, timeout=300, check=False
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
