"""Dataset readers, class mapping and safe archive extraction (fixtures written by the tests)."""
import io
import json
import math
import os
import stat
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from clrp.datasets import (
    ArchiveLimits, CocoDataset, CsvDataset, FolderDataset, Obj, VocDataset, box_to_mask,
    detect_format, map_classes, open_dataset, rle_decode, rle_encode, rle_string_to_counts,
    safe_extract,
)
from clrp.errors import ClrpError, DatasetError, UnsafeArchive


def _img(path, w=40, h=30, color=(200, 10, 10)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)


def _voc_xml(filename, w, h, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def make_voc(root, extra=True):
    ann, jpg = os.path.join(root, "Annotations"), os.path.join(root, "JPEGImages")
    os.makedirs(ann)
    _img(os.path.join(jpg, "000001.jpg"))
    with open(os.path.join(ann, "000001.xml"), "w") as f:
        f.write(_voc_xml("000001.jpg", 40, 30, [("dog", (1, 1, 10, 5), 0), ("cat", (20, 10, 40, 30), 1),
                                                 ("dog", (31, 21, 35, 25), 0)]))
    _img(os.path.join(jpg, "000002.jpg"))
    with open(os.path.join(ann, "000002.xml"), "w") as f:
        f.write(_voc_xml("000002.jpg", 40, 30, [("person", (5, 5, 6, 6), 0)]))
    if extra:
        # broken XML
        with open(os.path.join(ann, "000003.xml"), "w") as f:
            f.write("<annotation><filename>000003.jpg</filename><object><name>dog")
        _img(os.path.join(jpg, "000003.jpg"))
        # missing image
        with open(os.path.join(ann, "000004.xml"), "w") as f:
            f.write(_voc_xml("000004.jpg", 40, 30, [("dog", (1, 1, 2, 2), 0)]))
        # bad box (xmax < xmin)
        _img(os.path.join(jpg, "000005.jpg"))
        with open(os.path.join(ann, "000005.xml"), "w") as f:
            f.write(_voc_xml("000005.jpg", 40, 30, [("dog", (10, 1, 2, 5), 0)]))
        # unknown class (with classes= filter) and a non-image "jpg" (broken image)
        with open(os.path.join(jpg, "000006.jpg"), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
        with open(os.path.join(ann, "000006.xml"), "w") as f:
            f.write(_voc_xml("000006.jpg", 40, 30, [("unicorn", (1, 1, 5, 5), 0), ("dog", (2, 2, 8, 8), 0)]))
    os.makedirs(os.path.join(root, "ImageSets", "Main"))
    with open(os.path.join(root, "ImageSets", "Main", "test.txt"), "w") as f:
        f.write("000002\n")


def _reasons(ds):
    return {p.file: p.reason for p in ds.problems}


# ----------------------------------------------------------------------------------------- VOC
def test_voc_boxes_converted_to_zero_based_exclusive(tmp_path):
    make_voc(str(tmp_path), extra=False)
    ds = VocDataset(str(tmp_path))
    samples = list(ds)
    assert [s.image_id for s in samples] == ["000001", "000002"]
    s = samples[0]
    assert (s.width, s.height) == (40, 30)
    assert s.objects[0] == Obj("dog", (0, 0, 10, 5), False)
    assert s.objects[1].difficult and s.objects[1].box == (19, 9, 40, 30)
    assert s.labels == ["dog", "cat"]
    m = s.gt_mask("dog")
    # VOC 1..10 x 1..5 inclusive = 10 x 5 pixels at the top-left, plus 30..34 x 20..24
    assert m.sum() == 10 * 5 + 5 * 5 and m[0, 0] and m[4, 9] and not m[5, 9] and not m[4, 10]
    assert m[20:25, 30:35].all()
    assert s.gt_mask("cat") is None  # all boxes difficult -> no ground truth
    assert ds.problems == []
    assert VocDataset(str(tmp_path), split="test").ids == ["000002"]
    assert ds.class_names() == ["cat", "dog", "person"]


def test_voc_malformed_files_reported_and_skipped(tmp_path):
    make_voc(str(tmp_path))
    ds = VocDataset(str(tmp_path), classes=["dog", "cat", "person"])
    ids = [s.image_id for s in ds]
    assert ids == ["000001", "000002", "000006"]
    r = _reasons(ds)
    assert "malformed XML" in r["000003.xml"]
    assert "missing image" in r["000004.xml"]
    assert "bad box" in r["000005.xml"]
    assert "unknown class 'unicorn'" in r["000006.xml"]
    # images: the undecodable 000006.jpg is reported and skipped, iteration goes on
    got = [s.image_id for s, img in ds.iter_images()]
    assert got == ["000001", "000002"]
    assert any(p.file.endswith("000006.jpg") and "cannot decode" in p.reason for p in ds.problems)
    n = len(ds.problems)
    list(ds)
    assert len(ds.problems) == n  # iterating again does not duplicate problems


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>000001.jpg</filename><object><name>&lol9;</name><difficult>0</difficult>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"""


def test_voc_entity_bombs_and_external_entities_refused(tmp_path):
    make_voc(str(tmp_path), extra=False)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    ann = tmp_path / "Annotations"
    (ann / "000001.xml").write_text(BILLION_LAUGHS)
    (ann / "000002.xml").write_text(
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file://{secret}">]>'
        "<annotation><filename>000002.jpg</filename><object><name>&xxe;</name><difficult>0</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    ds = VocDataset(str(tmp_path))
    assert list(ds) == []
    r = _reasons(ds)
    assert "unsafe XML" in r["000001.xml"] and "unsafe XML" in r["000002.xml"]
    assert all("TOPSECRET" not in p.reason and "lollol" not in p.reason for p in ds.problems)


# ---------------------------------------------------------------------------------------- COCO
def _rle_to_string(counts):
    """Independent encoder (pycocotools rleToString) used as the test oracle."""
    s = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            s.append(chr(c + 48))
    return "".join(s)


def test_rle_string_known_answers():
    assert rle_string_to_counts("321") == [3, 2, 1]
    assert rle_string_to_counts("T3") == [100]            # 100 = 4 + 3*32 -> 'T' (36+48), '3'
    assert rle_string_to_counts("5:3H") == [5, 10, 3, 2]  # 4th count stored as 2 - 10 = -8 -> 'H'
    rng = np.random.default_rng(0)
    for _ in range(20):
        counts = [int(v) for v in rng.integers(0, 5000, size=rng.integers(1, 30))]
        assert rle_string_to_counts(_rle_to_string(counts)) == counts
    with pytest.raises(DatasetError):
        rle_string_to_counts("T")  # truncated: continuation bit without a next group


def test_rle_decode_column_major():
    # 3x2 image (h=3, w=2); column-major runs: 1 zero, 2 ones, 3 zeros
    m = rle_decode([1, 2, 3], 3, 2)
    assert m.tolist() == [[False, False], [True, False], [True, False]]
    assert rle_encode(m) == [1, 2, 3]
    assert (rle_decode(_rle_to_string([1, 2, 3]), 3, 2) == m).all()
    with pytest.raises(DatasetError):
        rle_decode([1, 2], 3, 2)  # does not cover the image


def make_coco(root):
    os.makedirs(os.path.join(root, "annotations"))
    _img(os.path.join(root, "val", "a.jpg"), 20, 10)
    _img(os.path.join(root, "val", "b.jpg"), 20, 10)
    _img(os.path.join(root, "val", "c.jpg"), 20, 10)
    crowd = np.zeros((10, 20), bool)
    crowd[2:4, 5:8] = True
    comp = np.zeros((10, 20), bool)
    comp[0:10, 19] = True
    data = {
        "images": [{"id": 11, "file_name": "a.jpg", "width": 20, "height": 10},
                   {"id": 12, "file_name": "b.jpg", "width": 20, "height": 10},
                   {"id": 13, "file_name": "missing.jpg", "width": 20, "height": 10},
                   {"id": 14, "file_name": "c.jpg", "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "person"}, {"id": 7, "name": "traffic light"},
                       {"id": 90, "name": "toothbrush"}],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 7, "bbox": [2, 1, 4, 3], "iscrowd": 0,
             "segmentation": [[2, 1, 5, 1, 5, 3, 2, 3]]},
            {"id": 2, "image_id": 11, "category_id": 90, "bbox": [5, 2, 3, 2], "iscrowd": 1,
             "segmentation": {"counts": rle_encode(crowd), "size": [10, 20]}},
            {"id": 3, "image_id": 11, "category_id": 1, "bbox": [19, 0, 1, 10], "iscrowd": 0,
             "segmentation": {"counts": _rle_to_string(rle_encode(comp)), "size": [10, 20]}},
            {"id": 4, "image_id": 11, "category_id": 55, "bbox": [0, 0, 1, 1], "iscrowd": 0},
            {"id": 5, "image_id": 12, "category_id": 1, "bbox": [3, 3, -1, 2], "iscrowd": 0},
            {"id": 6, "image_id": 999, "category_id": 1, "bbox": [3, 3, 1, 2], "iscrowd": 0},
            {"id": 7, "image_id": 14, "category_id": 90, "bbox": [0, 0, 4, 4], "iscrowd": 0},
        ],
    }
    path = os.path.join(root, "annotations", "instances_val.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path, crowd, comp


def test_coco_reader(tmp_path):
    path, crowd, comp = make_coco(str(tmp_path))
    ds = CocoDataset(path)
    assert ds.images_dir == str(tmp_path / "val")
    assert ds.class_names() == ["person", "traffic light", "toothbrush"]
    samples = list(ds)
    assert [s.image_id for s in samples] == ["11", "14"]
    s = samples[0]
    tl, tb, pe = s.objects
    assert tl.class_name == "traffic light" and tl.box == (2, 1, 6, 4)
    assert tb.iscrowd and (tb.mask == crowd).all()
    assert (pe.mask == comp).all() and pe.mask.shape == (10, 20)
    poly = tl.mask  # polygon (2,1)-(5,3) in pixel-edge coordinates = columns 2..4, rows 1..2
    expect = np.zeros((10, 20), bool)
    expect[1:3, 2:5] = True
    assert (poly == expect).all()
    assert (s.gt_mask("toothbrush") == crowd).all()
    gt_box = s.gt_mask("traffic light", use_masks=False)
    assert gt_box.sum() == 4 * 3 and gt_box[1:4, 2:6].all()
    assert samples[1].gt_mask("toothbrush").sum() == 16  # no segmentation -> box
    r = _reasons(ds)
    assert "unknown category id 55" in r["a.jpg"]
    assert "bad bbox" in r["b.jpg"]
    assert "missing image" in r["missing.jpg"]
    assert any("unknown image" in p.reason for p in ds.problems)


def test_polygon_rasterisation_area():
    from clrp.datasets import polygons_to_mask

    m = polygons_to_mask([[2, 1, 5, 1, 5, 3, 2, 3]], 6, 8)
    assert m.sum() == 6 and m[1:3, 2:5].all()
    # two parts, union; a 100x100 square and a right triangle of area 5000 (+ half-covered diagonal)
    two = polygons_to_mask([[0, 0, 100, 0, 100, 100, 0, 100], [200, 200, 300, 200, 300, 300]], 400, 400)
    assert two[:100, :100].all() and abs(two.sum() - 15000) <= 100
    pts = [v for k in range(200) for v in (50 + 30 * math.cos(2 * math.pi * k / 200),
                                           40 + 30 * math.sin(2 * math.pi * k / 200))]
    assert abs(polygons_to_mask([pts], 100, 100).sum() - math.pi * 900) < 0.02 * math.pi * 900
    # clipped to the image; degenerate polygon -> empty
    assert polygons_to_mask([[-10, -10, 5, -10, 5, 5, -10, 5]], 10, 10).sum() == 25
    assert polygons_to_mask([[1, 1, 4, 1, 7, 1]], 10, 10).sum() == 0


def test_coco_not_a_coco_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("[1, 2, 3]")
    with pytest.raises(DatasetError):
        CocoDataset(str(p))
    p.write_text("{broken")
    with pytest.raises(DatasetError):
        CocoDataset(str(p))


# ----------------------------------------------------------------------------------------- CSV
def test_csv_reader_conventions_and_problems(tmp_path):
    for n in ("a.jpg", "b.jpg", "c.jpg", "e.jpg"):
        _img(str(tmp_path / "imgs" / n))
    (tmp_path / "boxes.csv").write_text(
        "filename,class,xmin,ymin,xmax,ymax\n"
        "a.jpg,dog,0,0,10,5\n"
        "a.jpg,cat,10,10,20,20\n"
        "b.jpg,dog,5,5,oops,9\n"
        "c.jpg,dragon,1,1,3,3\n"
        "c.jpg,dog,1,1,3,3\n"
        "d.jpg,dog,1,1,3,3\n"
        "e.jpg,,,,,\n"
        "c.jpg,dog,8,8,4,9\n".replace("c.jpg,dog,8,8,4,9\n", ""))
    ds = CsvDataset(str(tmp_path / "boxes.csv"), images_dir=str(tmp_path / "imgs"), classes=["dog", "cat"])
    samples = {s.image_id: s for s in ds}
    assert list(samples) == ["a.jpg", "c.jpg", "e.jpg"]
    assert samples["a.jpg"].objects[0].box == (0, 0, 10, 5)
    assert samples["a.jpg"].gt_mask("dog").sum() == 50
    assert [o.class_name for o in samples["c.jpg"].objects] == ["dog"]
    assert samples["e.jpg"].objects == []
    r = _reasons(ds)
    assert "bad box" in r["b.jpg"] and "missing image" in r["d.jpg"]
    assert "unknown class 'dragon'" in r["c.jpg"]
    # headerless, VOC convention
    (tmp_path / "voc.csv").write_text("a.jpg,dog,1,1,10,5\na.jpg,dog,9,1,3,5\n")
    ds2 = CsvDataset(str(tmp_path / "voc.csv"), images_dir=str(tmp_path / "imgs"), box_convention="voc")
    assert list(ds2) == [] and "bad box" in _reasons(ds2)["a.jpg"]
    (tmp_path / "voc.csv").write_text("a.jpg,dog,1,1,10,5\n")
    ds3 = CsvDataset(str(tmp_path / "voc.csv"), images_dir=str(tmp_path / "imgs"), box_convention="voc")
    assert next(iter(ds3)).objects[0].box == (0, 0, 10, 5)


def test_folder_tree(tmp_path):
    _img(str(tmp_path / "cat" / "1.png"))
    _img(str(tmp_path / "cat" / "sub" / "2.jpg"))
    _img(str(tmp_path / "dog" / "3.jpg"))
    (tmp_path / "dog" / "notes.txt").write_text("x")
    os.makedirs(tmp_path / "empty")
    ds = FolderDataset(str(tmp_path))
    assert ds.class_names() == ["cat", "dog"]
    got = [(s.image_id, s.labels) for s in ds]
    assert got == [("cat/1.png", ["cat"]), ("cat/sub/2.jpg", ["cat"]), ("dog/3.jpg", ["dog"])]
    assert len(ds) == 3
    s, img = next(ds.iter_images())
    assert img.size == (40, 30) and (s.width, s.height) == (40, 30)


# -------------------------------------------------------------------------------- class mapping
def test_class_mapping():
    model = ["background", "Potted Plant", "tv_monitor", "tench, Tinca tinca", "Dog", "dog"]
    cm = map_classes(["pottedplant", "TVMonitor", "tench", "dog", "unicorn", "horse", "cow"], model,
                     mapping={"horse": "tench, Tinca tinca", "cow": 0})
    assert cm.index == {"pottedplant": 1, "TVMonitor": 2, "tench": 3, "dog": 4, "horse": 3, "cow": 0}
    assert cm.unmapped == ["unicorn"]
    assert cm.how["tench"] == "synonym" and cm.how["horse"] == "explicit"
    assert cm.ambiguous == {"dog": [4, 5]}
    assert "unicorn" in cm.report()
    with pytest.raises(DatasetError):
        map_classes(["a"], model, mapping={"a": "nonexistent"})
    with pytest.raises(DatasetError):
        map_classes(["a"], model, mapping={"a": 17})


def test_dataset_map_classes_reports_unmapped(tmp_path):
    make_voc(str(tmp_path), extra=False)
    cm = VocDataset(str(tmp_path)).map_classes(["Dog", "cat"])
    assert cm.index == {"cat": 1, "dog": 0} and cm.unmapped == ["person"]


# ------------------------------------------------------------------------------------ archives
def test_zip_slip_and_absolute_paths_refused(tmp_path):
    for bad in ("../evil.txt", "a/../../evil.txt", "/tmp/evil_abs.txt", "C:/evil.txt", "..\\evil.txt"):
        z = tmp_path / "bad.zip"
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("ok.txt", "fine")
            zf.writestr(zipfile.ZipInfo(bad), "pwned")
        dest = tmp_path / "out"
        with pytest.raises(UnsafeArchive):
            safe_extract(str(z), str(dest))
        assert not (tmp_path / "evil.txt").exists()
        assert not os.path.exists("/tmp/evil_abs.txt")
        assert not (dest / "ok.txt").exists()  # validated before anything is written


def test_symlinks_refused(tmp_path):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchive, match="symlink"):
        safe_extract(str(z), str(tmp_path / "o1"))
    t = tmp_path / "link.tar"
    with tarfile.open(t, "w") as tf:
        ti = tarfile.TarInfo("link")
        ti.type = tarfile.SYMTYPE
        ti.linkname = "/etc/passwd"
        tf.addfile(ti)
    with pytest.raises(UnsafeArchive, match="link"):
        safe_extract(str(t), str(tmp_path / "o2"))
    t2 = tmp_path / "trav.tar"
    with tarfile.open(t2, "w") as tf:
        ti = tarfile.TarInfo("../evil.txt")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"abc"))
    with pytest.raises(UnsafeArchive):
        safe_extract(str(t2), str(tmp_path / "o3"))
    assert not (tmp_path / "evil.txt").exists()


def test_zip_bomb_refused(tmp_path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (20 * 1024 ** 2))
    assert os.path.getsize(z) < 100_000
    with pytest.raises(UnsafeArchive, match="ratio"):
        safe_extract(str(z), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "zeros.bin").exists()
    # same bomb as tar.gz: no per-member ratio, caught by the whole-archive ratio
    t = tmp_path / "bomb.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        ti = tarfile.TarInfo("zeros.bin")
        ti.size = 20 * 1024 ** 2
        tf.addfile(ti, io.BytesIO(b"\0" * ti.size))
    with pytest.raises(UnsafeArchive, match="ratio"):
        safe_extract(str(t), str(tmp_path / "out2"))
    # limits are configurable
    safe_extract(str(z), str(tmp_path / "out3"), ArchiveLimits(max_ratio=1e6))
    assert os.path.getsize(tmp_path / "out3" / "zeros.bin") == 20 * 1024 ** 2


def test_archive_count_and_size_limits(tmp_path):
    z = tmp_path / "many.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(20):
            zf.writestr(f"f{i}.txt", "x" * 100)
    with pytest.raises(UnsafeArchive, match="entries"):
        safe_extract(str(z), str(tmp_path / "a"), ArchiveLimits(max_files=10))
    with pytest.raises(UnsafeArchive, match="expands"):
        safe_extract(str(z), str(tmp_path / "b"), ArchiveLimits(max_total_bytes=1000))
    safe_extract(str(z), str(tmp_path / "c"))
    assert len(os.listdir(tmp_path / "c")) == 20


def test_open_dataset_detects_formats_and_archives(tmp_path):
    voc = tmp_path / "src" / "VOCdevkit" / "VOC2007"
    make_voc(str(voc), extra=False)
    assert detect_format(str(tmp_path / "src")) == ("voc", str(voc))
    z = tmp_path / "voc.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for dirpath, _, files in os.walk(tmp_path / "src"):
            for f in files:
                p = os.path.join(dirpath, f)
                zf.write(p, os.path.relpath(p, tmp_path / "src"))
    with open_dataset(str(z)) as ds:
        assert ds.format == "voc" and [s.image_id for s in ds] == ["000001", "000002"]
        root = ds.root
        assert os.path.isdir(root)
    assert not os.path.exists(root)  # temporary extraction removed by close()

    coco_root = tmp_path / "coco"
    path, _, _ = make_coco(str(coco_root))
    t = tmp_path / "coco.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        tf.add(str(coco_root), arcname="coco")
    ds = open_dataset(str(t))
    assert ds.format == "coco" and [s.image_id for s in ds] == ["11", "14"]
    ds.close()
    assert open_dataset(path).format == "coco"
    (tmp_path / "f" / "cat").mkdir(parents=True)
    _img(str(tmp_path / "f" / "cat" / "x.jpg"))
    assert open_dataset(str(tmp_path / "f")).format == "folders"
    with pytest.raises(DatasetError):
        open_dataset(str(tmp_path / "nothing"))
    with pytest.raises(ClrpError):
        open_dataset(str(tmp_path / "f"), format="pascal")


def test_box_to_mask_fractional_and_clipped():
    m = box_to_mask((0.5, 1.2, 2.1, 2.0), 4, 4)
    assert m.tolist() == [[False] * 4, [True, True, True, False], [False] * 4, [False] * 4]
    assert box_to_mask((-5, -5, 100, 2), 4, 4).sum() == 8


def test_voc_masks_from_scene_export_and_segmentation_object(tmp_path):
    from clrp.scenes import easy, export

    sc = [easy.generate_scene(s) for s in (11, 12, 13)]
    z = tmp_path / "scenes.zip"
    export.export_voc(sc, z, split="test")
    with open_dataset(str(z), split="test") as ds:
        got = list(ds)
        assert len(got) == 3 and ds.problems == []
        for scene, s in zip(sc, got):
            assert len(s.objects) == len(scene.objects)
            for so, o in zip(scene.objects, s.objects):
                x0, y0, x1, y1 = so.box  # scenes: 0-based inclusive -> ours: exclusive end
                assert o.box == (x0, y0, x1 + 1, y1 + 1)
                assert o.has_mask and (o.mask == so.mask).all()
                assert (box_to_mask(o.box, s.height, s.width) >= o.mask).all()
    # VOC SegmentationObject: pixel value k+1 = k-th object, 255 = void
    make_voc(str(tmp_path / "v"), extra=False)
    seg = np.zeros((30, 40), np.uint8)
    seg[0:3, 0:4] = 1
    seg[25, 35] = 3
    seg[10:30, 20:40][0, 0] = 2
    seg[5, 5] = 255
    img = Image.fromarray(seg, mode="L").convert("P")
    os.makedirs(tmp_path / "v" / "SegmentationObject")
    img.save(tmp_path / "v" / "SegmentationObject" / "000001.png")
    s = next(iter(VocDataset(str(tmp_path / "v"))))
    assert s.objects[0].mask.sum() == 12 and s.objects[2].mask.sum() == 1 and s.objects[1].mask.sum() == 1
    assert s.gt_mask("dog").sum() == 13 and not s.gt_mask("dog")[5, 5]
    assert VocDataset(str(tmp_path / "v"), use_masks=False).read("000001").objects[0].has_mask is False


def test_corrupt_archives_raise_dataset_error(tmp_path):
    z = tmp_path / "c.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.txt", "hello world " * 1000)
    data = bytearray(z.read_bytes())
    i = data.find(b"a.txt", 30) + 5 + 20  # inside the compressed data of the first member
    data[i:i + 8] = b"\xff" * 8
    z.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as e:
        safe_extract(str(z), str(tmp_path / "o"))
    assert not isinstance(e.value, UnsafeArchive)
    assert not (tmp_path / "o" / "a.txt").exists()
    # a file and a folder of the same name
    z2 = tmp_path / "d.zip"
    with zipfile.ZipFile(z2, "w") as zf:
        zf.writestr("a", "x")
        zf.writestr("a/b", "y")
    with pytest.raises(DatasetError):
        safe_extract(str(z2), str(tmp_path / "o2"))
    t = tmp_path / "t.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        ti = tarfile.TarInfo("f.bin")
        ti.size = 100_000
        tf.addfile(ti, io.BytesIO(os.urandom(100_000)))
    t.write_bytes(t.read_bytes()[: 50_000])  # truncated
    with pytest.raises(DatasetError):
        safe_extract(str(t), str(tmp_path / "o3"))


def test_open_dataset_explicit_format(tmp_path):
    path, _, _ = make_coco(str(tmp_path / "c"))
    ds = open_dataset(str(tmp_path / "c"), format="coco")
    assert ds.format == "coco" and ds.annotation_file == path
    with pytest.raises(DatasetError, match="no CSV"):
        open_dataset(str(tmp_path / "c"), format="csv")
    with pytest.raises(DatasetError, match="not a VOC"):
        open_dataset(str(tmp_path / "c"), format="voc")
    (tmp_path / "c" / "val" / "boxes.csv").write_text("a.jpg,dog,0,0,3,3\n")
    ds = open_dataset(str(tmp_path / "c" / "val"), format="csv")
    assert ds.format == "csv" and [s.image_id for s in ds] == ["a.jpg"]


def test_coco_masks_are_pycocotools_masks(tmp_path):
    """Ground truth on COCO is what every COCO evaluation uses: pycocotools' annToMask, bit for bit,
    also for polygons with fractional vertices on pixel boundaries."""
    from pycocotools.coco import COCO
    rng = np.random.default_rng(0)
    _img(os.path.join(str(tmp_path), "val", "a.jpg"), 37, 23)
    anns = []
    for k in range(30):
        pts = []
        for _ in range(int(rng.integers(3, 9))):
            pts += [round(float(rng.uniform(-2, 39)), int(rng.integers(0, 3))),
                    round(float(rng.uniform(-2, 25)), int(rng.integers(0, 3)))]
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0,
                     "area": 1.0, "segmentation": [pts]})
    os.makedirs(tmp_path / "annotations")
    path = tmp_path / "annotations" / "instances_val.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 37, "height": 23}],
                                "categories": [{"id": 1, "name": "thing"}], "annotations": anns}))
    ours = [o.mask for o in next(iter(CocoDataset(str(path)))).objects]
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO(str(path))
    theirs = [api.annToMask(a).astype(bool) for a in api.loadAnns(api.getAnnIds())]
    assert len(ours) == len(theirs) == 30
    assert all((a == b).all() for a, b in zip(ours, theirs))
