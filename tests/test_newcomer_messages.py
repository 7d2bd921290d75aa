"""Messages a newcomer meets (issue 20, item 7): each says what is wrong where it is shown."""
import os
import re
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from clrp import cli, notices
from clrp.datasets import DatasetError, map_classes, open_dataset
from clrp.errors import InvalidImage
from clrp.imageio import MAX_PIXELS, open_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photo(path, size=(160, 90)):
    """A photograph-like image: smooth colour gradients with noise, nothing like a scene."""
    w, h = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 / max(1, w - 1), yy * 255 / max(1, h - 1), (xx + yy) % 256], -1)
    a = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    Image.fromarray(a).save(path)
    return path


# ------------------------------------------------------------- explain: domain and small images
@pytest.fixture(scope="module")
def bundled():
    from clrp.models import load

    return load("bundled")


def test_cli_explain_on_a_photograph_with_the_scene_model_prints_the_domain_warning(tmp_path, capsys, bundled):
    photo = _photo(tmp_path / "holiday.png")
    assert cli.main(["explain", str(photo), "--model", "bundled", "--method", "gradient"]) == 0
    captured = capsys.readouterr()
    warning = notices.domain_warning(bundled)
    assert warning and "procedural scenes" in warning and "meaningless" in warning
    assert warning in captured.err, captured  # the dashboard's text, from the same function
    assert "top classes" in captured.out


def test_the_domain_text_has_one_source():
    """The dashboard builds its warning with clrp.notices, not with a copy of the text."""
    ui = open(os.path.join(REPO, "dashboard", "ui.py"), encoding="utf-8").read()
    assert "knows only" not in ui and "notices.input_warnings" in ui


def test_a_1x1_image_is_warned(tmp_path, capsys, bundled):
    Image.new("RGB", (1, 1), (200, 30, 30)).save(tmp_path / "dot.png")
    assert notices.small_image_warning((1, 1)) and notices.small_image_warning((64, 48)) is None
    assert cli.main(["explain", str(tmp_path / "dot.png"), "--model", "bundled", "--method", "gradient"]) == 0
    err = capsys.readouterr().err
    assert "1x1 pixels" in err and f"below {notices.MIN_IMAGE_SIDE} px" in err, err


def test_input_warnings_of_a_known_scene_and_of_an_imagenet_model(bundled):
    assert notices.input_warnings(bundled, (96, 96), known_scene=True) == []
    assert notices.input_warnings(bundled, (96, 96)) == [notices.domain_warning(bundled)]

    class ImageNetModel:
        architecture, name, domain = "resnet50", "resnet50", "ImageNet photographs."

    assert notices.input_warnings(ImageNetModel(), (640, 480)) == []


# ----------------------------------------------------------------------------- oversized images
def _png_header(width, height) -> bytes:
    """A PNG that declares ``width`` x ``height`` (and holds almost no data): a decompression bomb's
    header, refused before any pixel is decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [6_500, 10_000, 20_000])  # below, between and above Pillow's two limits
def test_an_oversized_image_quotes_max_pixels_not_pillows_limit(side):
    with pytest.raises(InvalidImage) as e:
        open_image(_png_header(side, side))
    msg = str(e.value)
    assert f"max_pixels = {MAX_PIXELS:,}" in msg and f"{side}x{side}" in msg, msg
    assert "178956970" not in msg and "89478485" not in msg and "DOS" not in msg, msg


def test_an_oversized_dataset_image_quotes_the_dataset_limit(tmp_path):
    from clrp.datasets.base import MAX_IMAGE_PIXELS, load_rgb

    (tmp_path / "big.png").write_bytes(_png_header(20_000, 20_000))
    with pytest.raises(DatasetError) as e:
        load_rgb(str(tmp_path / "big.png"))
    msg = str(e.value)
    assert f"{MAX_IMAGE_PIXELS:,}" in msg and "20000x20000" in msg and "178956970" not in msg, msg


# --------------------------------------------------------------------------- datasets
def test_a_zip_of_only_jpegimages_says_the_annotations_are_missing(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.jpg")
    with zipfile.ZipFile(tmp_path / "voc.zip", "w") as z:
        for n in ("000001.jpg", "000002.jpg"):
            z.write(tmp_path / "a.jpg", f"VOC2007/JPEGImages/{n}")
    with pytest.raises(DatasetError) as e:
        open_dataset(str(tmp_path / "voc.zip"), display_name="voc.zip")
    msg = str(e.value)
    assert msg.startswith("voc.zip:") and "Annotations/" in msg and "JPEGImages/" in msg, msg
    assert "class" not in msg.split("Annotations/")[0], msg  # annotations first, not class mapping


def test_a_csv_with_wrong_columns_names_the_missing_columns(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.jpg")
    (tmp_path / "boxes.csv").write_text("image,label,x1,y1,x2,y2\na.jpg,dog,0,0,5,5\na.jpg,cat,1,1,4,4\n")
    with pytest.raises(DatasetError) as e:
        open_dataset(str(tmp_path / "boxes.csv"), display_name="boxes.csv")
    msg = str(e.value)
    for col in ("filename", "class", "xmin", "ymin", "xmax", "ymax"):
        assert col in msg, msg
    assert "image, label, x1" in msg  # and what the file has instead


def _consecutive_duplicates(text):
    words = re.findall(r"[A-Za-z]+", text)
    return [a for a, b in zip(words, words[1:]) if a.lower() == b.lower()]


def test_the_mapping_report_does_not_double_a_word():
    cm = map_classes(["unicorn", "griffin"], ["dog", "cat"])
    flat = " ".join(cm.report().split())  # as shown on one line (Markdown joins lines)
    assert _consecutive_duplicates(flat) == [], flat
    assert "unicorn" in flat and "griffin" in flat


def _unmapped_dataset(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    Image.new("RGB", (40, 30)).save(root / "JPEGImages" / "a.jpg")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>40</width><height>30</height></size><object>"
        "<name>unicorn</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
        "</object></annotation>")
    return root


def test_mapping_advice_fits_where_it_is_shown(tmp_path, capsys):
    """The library (and so the dashboard, which has no mapping control) advises renaming and names
    no Python argument; the command line adds its --mapping option."""
    import torch

    from clrp.scenes.shapes import CLASS_NAMES
    from clrp.evaluation.runner import run_evaluation
    from clrp.models import build_architecture

    root = _unmapped_dataset(tmp_path)
    torch.manual_seed(0)
    net = build_architecture("scene_vgg", len(CLASS_NAMES))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    (tmp_path / "classes.txt").write_text("\n".join(CLASS_NAMES))
    from clrp.models import load

    lm = load("tiny", architecture="scene_vgg", weights=str(tmp_path / "w.pt"),
              class_names=str(tmp_path / "classes.txt"))
    with open_dataset(str(root)) as ds, pytest.raises(DatasetError) as e:
        run_evaluation(ds, lm, str(tmp_path / "out"), methods=("gradient",), protocols=("pointing",))
    msg = str(e.value)
    assert "unicorn" in msg and "rename" in msg and "mapping=" not in msg and "--mapping" not in msg, msg
    assert "\n" not in msg and _consecutive_duplicates(msg) == [], msg
    code = cli.main(["evaluate", "--dataset", str(root), "--model", "tiny", "--architecture", "scene_vgg",
                     "--weights", str(tmp_path / "w.pt"), "--class-names", str(tmp_path / "classes.txt"),
                     "--methods", "gradient", "--protocols", "pointing", "--out", str(tmp_path / "cli"),
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "unicorn" in err and "--mapping" in err and "mapping=" not in err, err


# --------------------------------------------------------------------------- docs
def _synopsis_flags(command: str) -> set:
    text = open(os.path.join(REPO, "docs", "EVALUATION.md"), encoding="utf-8").read()
    block = text.split("## Command line", 1)[1].split("```")[1]
    lines, keep = [], False
    for line in block.splitlines():
        if line.startswith("python -m clrp "):
            keep = line.split()[3] == command
        if keep:
            lines.append(line.split("#")[0])
    return set(re.findall(r"(--[a-z][a-z-]*)", " ".join(lines)))


def _parser_flags(command: str) -> set:
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices[command]
    return {o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


@pytest.mark.parametrize("command", ["evaluate", "explain"])
def test_the_documented_synopsis_matches_the_parser(command):
    doc, parser = _synopsis_flags(command), _parser_flags(command)
    assert doc - parser == set(), "documented but not accepted"
    if command == "evaluate":
        assert parser - doc == set(), "accepted but not documented"


def test_the_documented_model_choices_are_the_parsers():
    text = open(os.path.join(REPO, "docs", "EVALUATION.md"), encoding="utf-8").read()
    assert f"--model {cli.MODEL_CHOICES}" in text
    assert "vgg16|vgg16_bn|vgg19|alexnet" not in text
