"""Image paths taken from annotations stay inside the dataset (issue 16, item 4): absolute paths,
``..`` escapes and symlinks that point out are refused with the same message as a missing file, so
the skipped-files list cannot tell which server paths exist."""
import json
import os
import zipfile

import pytest
from PIL import Image

from clrp.datasets import MISSING_IMAGE, CocoDataset, CsvDataset, FolderDataset, VocDataset, open_dataset


def _img(path, w=20, h=10):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (w, h), (200, 10, 10)).save(path)


@pytest.fixture
def outside(tmp_path):
    """A real image outside the dataset folder (what an attacker would point at)."""
    p = tmp_path / "elsewhere" / "secret.jpg"
    _img(str(p))
    return p


def _reasons(ds):
    return {p.file: p.reason for p in ds.problems}


def _only_problem_reason(ds):
    reasons = {p.reason for p in ds.problems}
    assert len(reasons) == 1, ds.problems
    return reasons.pop()


def test_csv_absolute_path_to_a_real_image_outside_the_root_is_refused(tmp_path, outside):
    root = tmp_path / "allowed" / "ds"
    _img(str(root / "a.jpg"))
    (root / "boxes.csv").write_text("filename,class,xmin,ymin,xmax,ymax\n"
                                    f"a.jpg,dog,0,0,5,5\n{outside},dog,0,0,5,5\n"
                                    f"{tmp_path / 'elsewhere' / 'nothing.jpg'},dog,0,0,5,5\n")
    ds = open_dataset(str(root))
    assert [s.image_id for s in ds] == ["a.jpg"]
    assert all(str(tmp_path / "elsewhere") not in s.path for s in ds)
    # the existing and the missing outside file get the same answer
    assert len(ds.problems) == 2
    assert _only_problem_reason(ds).startswith("missing image")


@pytest.mark.parametrize("name", ["../elsewhere/secret.jpg", "sub/../../elsewhere/secret.jpg"])
def test_csv_dotdot_paths_are_refused(tmp_path, outside, name):
    root = tmp_path / "ds"
    _img(str(root / "a.jpg"))
    (root / "boxes.csv").write_text(f"a.jpg,dog,0,0,5,5\n{name},dog,0,0,5,5\n../elsewhere/none.jpg,dog,0,0,5,5\n")
    ds = CsvDataset(str(root / "boxes.csv"))
    assert [s.image_id for s in ds] == ["a.jpg"]
    assert _only_problem_reason(ds).startswith("missing image")


def test_dotdot_that_stays_inside_the_dataset_is_fine(tmp_path):
    _img(str(tmp_path / "ds" / "images" / "a.jpg"))
    (tmp_path / "ds" / "labels").mkdir(parents=True)
    (tmp_path / "ds" / "labels" / "boxes.csv").write_text("../images/a.jpg,dog,0,0,5,5\n")
    ds = open_dataset(str(tmp_path / "ds"))
    assert [s.image_id for s in ds] == ["../images/a.jpg"] and not ds.problems


def test_symlink_pointing_out_of_the_dataset_is_refused(tmp_path, outside):
    root = tmp_path / "ds"
    _img(str(root / "a.jpg"))
    os.symlink(outside, root / "link.jpg")
    (root / "boxes.csv").write_text("a.jpg,dog,0,0,5,5\nlink.jpg,dog,0,0,5,5\n")
    ds = CsvDataset(str(root / "boxes.csv"))
    assert [s.image_id for s in ds] == ["a.jpg"]
    assert _reasons(ds)["link.jpg"].startswith("missing image")


def _coco(images):
    return {"images": [{"id": i, "file_name": f, "width": 20, "height": 10} for i, f in enumerate(images)],
            "categories": [{"id": 1, "name": "dog"}],
            "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0}
                            for i in range(len(images))]}


def test_uploaded_coco_json_with_an_absolute_path_is_refused(tmp_path, outside):
    up = tmp_path / "upload.zip"
    _img(str(tmp_path / "a.jpg"))
    with zipfile.ZipFile(up, "w") as z:
        z.writestr("instances_val.json", json.dumps(_coco(["a.jpg", str(outside), str(outside) + ".none"])))
        z.write(tmp_path / "a.jpg", "a.jpg")
    ds = open_dataset(str(up), display_name="upload.zip")
    try:
        assert [s.image_id for s in ds] == ["0"]
        assert _only_problem_reason(ds).startswith("missing image")
        assert len(ds.problems) == 2
    finally:
        ds.close()


def test_coco_images_folder_guess_stays_inside_the_upload(tmp_path):
    """A JSON at the top of an archive must not make the extraction folder's parent the images
    folder (the file names below it would then be read)."""
    ext = tmp_path / "work" / "extract"
    _img(str(tmp_path / "work" / "victim.jpg"))  # a sibling of the extraction folder
    up = tmp_path / "up.zip"
    with zipfile.ZipFile(up, "w") as z:
        z.writestr("instances_val.json", json.dumps(_coco(["victim.jpg"])))
    ds = open_dataset(str(up), extract_to=str(ext))
    assert list(ds) == []
    assert _only_problem_reason(ds).startswith("missing image")


def test_coco_standard_layout_still_reads(tmp_path):
    _img(str(tmp_path / "val" / "a.jpg"))
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(_coco(["a.jpg", "../../x.jpg"])))
    ds = CocoDataset(str(tmp_path / "annotations" / "instances_val.json"))
    assert [s.image_id for s in ds] == ["0"]
    assert _only_problem_reason(ds).startswith("missing image")


def test_voc_image_symlink_pointing_out_is_refused(tmp_path, outside):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    os.symlink(outside, root / "JPEGImages" / "000001.jpg")
    _img(str(root / "JPEGImages" / "000002.jpg"))
    for i in (1, 2):
        (root / "Annotations" / f"00000{i}.xml").write_text(
            f"<annotation><filename>00000{i}.jpg</filename><size><width>20</width><height>10</height></size>"
            "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
            "</bndbox></object></annotation>")
    ds = VocDataset(str(root))
    assert [s.image_id for s in ds] == ["000002"]
    assert _reasons(ds)["000001.xml"] == f"000001.jpg: {MISSING_IMAGE}"  # as for a missing file


def test_folder_dataset_skips_symlinks_pointing_out(tmp_path, outside):
    _img(str(tmp_path / "tree" / "dog" / "a.jpg"))
    os.symlink(outside, tmp_path / "tree" / "dog" / "b.jpg")
    ds = FolderDataset(str(tmp_path / "tree"))
    assert [s.image_id for s in ds] == ["dog/a.jpg"]


def test_voc_split_list_cannot_name_annotations_outside(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "secret.xml").write_text("<annotation><filename>x.jpg</filename></annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("../../secret\n")
    ds = VocDataset(str(root), split="test")
    assert list(ds) == []
    assert "missing annotation file" in ds.problems[0].reason


def test_dashboard_server_source_csv_with_an_absolute_path_is_refused(tmp_path, outside, monkeypatch):
    """The dashboard's path: a CSV file picked under an allowed root, naming a real image elsewhere."""
    from dashboard import core

    root = tmp_path / "allowed"
    _img(str(root / "ds" / "a.jpg"))
    (root / "ds" / "boxes.csv").write_text(f"a.jpg,dog,0,0,5,5\n{outside},dog,0,0,5,5\n")
    monkeypatch.setenv(core.ROOTS_ENV, str(root))
    ds = core.open_source({"kind": "server", "path": "ds/boxes.csv"})
    assert [s.image_id for s in ds] == ["a.jpg"]
    assert _only_problem_reason(ds) == MISSING_IMAGE and str(tmp_path) not in str(ds.problems)
