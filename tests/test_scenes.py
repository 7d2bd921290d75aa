import hashlib
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
from defusedxml.ElementTree import fromstring as safe_fromstring
from PIL import Image

from clrp.scenes.easy import SCENE_SIZE, generate_dataset, generate_scene
from clrp.scenes.export import export_voc, scene_to_voc_xml
from clrp.scenes.shapes import CLASS_NAMES, Scene, SceneObject


def _digest(scene):
    h = hashlib.sha256(scene.image.tobytes())
    for o in scene.objects:
        h.update(repr((o.class_name, o.class_index, o.box)).encode())
        h.update(np.packbits(o.mask).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def sample():
    return generate_dataset(120, seed=5_000)


def test_deterministic_same_seed_same_bytes():
    a, b = generate_scene(1234), generate_scene(1234)
    assert _digest(a) == _digest(b)
    assert _digest(generate_scene(1235)) != _digest(a)


def test_shapes_types_and_classes(sample):
    assert len(CLASS_NAMES) >= 8 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    for sc in sample:
        assert sc.image.dtype == np.uint8 and sc.image.shape == (SCENE_SIZE, SCENE_SIZE, 3)
        assert 1 <= len(sc.objects) <= 3
        idx = [o.class_index for o in sc.objects]
        assert len(set(idx)) == len(idx), "objects of a scene have distinct classes"
        for o in sc.objects:
            assert CLASS_NAMES[o.class_index] == o.class_name
        assert sc.labels.sum() == len(sc.objects)


def test_box_is_tight_bbox_of_mask_and_masks_disjoint(sample):
    for sc in sample:
        union = np.zeros(sc.image.shape[:2], dtype=int)
        for o in sc.objects:
            assert o.mask.dtype == bool and o.mask.shape == sc.image.shape[:2]
            ys, xs = np.nonzero(o.mask)
            assert o.box == (xs.min(), ys.min(), xs.max(), ys.max())
            assert o.area >= 30
            union += o.mask
        assert union.max() <= 1


def test_objects_are_visible(sample):
    # the pixels of an object differ from the background ring around it: the task is learnable
    for sc in sample[:40]:
        img = sc.image.astype(float)
        for o in sc.objects:
            inside = img[o.mask].mean(0)
            x0, y0, x1, y1 = o.box
            ring = np.zeros_like(o.mask)
            ring[max(0, y0 - 4):y1 + 5, max(0, x0 - 4):x1 + 5] = True
            ring &= ~o.mask
            for other in sc.objects:
                ring &= ~other.mask
            if ring.sum() > 10:
                assert np.linalg.norm(inside - img[ring].mean(0)) > 20


def test_class_balance_and_multi_class_share():
    sc = generate_dataset(400, seed=77_000)
    multi = np.mean([len(s.class_indices) >= 2 for s in sc])
    assert multi >= 0.5
    counts = np.stack([s.labels for s in sc]).sum(0)
    assert counts.min() > 0.5 * counts.mean()  # every class appears often


def _parse_voc(xml_text):
    root = safe_fromstring(xml_text)
    objs = []
    for o in root.findall("object"):
        bb = o.find("bndbox")
        objs.append((o.findtext("name"), int(o.findtext("difficult")),
                     tuple(int(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))))
    size = root.find("size")
    return root.findtext("filename"), (int(size.findtext("width")), int(size.findtext("height"))), objs


def _check_voc(read, sample, split):
    ids = read(f"ImageSets/Main/{split}.txt").decode().split()
    assert ids == [s.name for s in sample]
    for sid, sc in zip(ids, sample):
        fname, size, objs = _parse_voc(read(f"Annotations/{sid}.xml"))
        assert fname == f"{sid}.jpg"
        assert size == (sc.image.shape[1], sc.image.shape[0])
        expected = [(o.class_name, 0, (o.box[0] + 1, o.box[1] + 1, o.box[2] + 1, o.box[3] + 1)) for o in sc.objects]
        assert objs == expected  # 1-based inclusive boxes
        import io
        im = Image.open(io.BytesIO(read(f"JPEGImages/{sid}.jpg")))
        assert im.size == size and im.format == "JPEG"
        assert np.abs(np.asarray(im.convert("RGB"), dtype=float) - sc.image).mean() < 6
        for k, o in enumerate(sc.objects):
            m = np.asarray(Image.open(io.BytesIO(read(f"Masks/{sid}_{k}.png")))) > 127
            assert np.array_equal(m, o.mask)


def test_voc_export_folder_roundtrip(tmp_path, sample):
    sub = sample[:15]
    out = export_voc(sub, tmp_path / "voc", split="val")
    _check_voc(lambda n: (out / n).read_bytes(), sub, "val")
    # also plain ElementTree parses it
    ET.parse(out / "Annotations" / f"{sub[0].name}.xml")


def test_voc_export_zip_roundtrip(tmp_path, sample):
    sub = sample[15:30]
    out = export_voc(sub, tmp_path / "scenes.zip", split="test")
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert all(not n.startswith("/") and ".." not in n for n in names)
        _check_voc(zf.read, sub, "test")


def test_voc_box_convention_exact():
    # a tiny hand-checkable case: box (x0,y0,x1,y1) 0-based inclusive -> VOC 1-based inclusive
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:7] = True
    sc = Scene(np.zeros((8, 8, 3), np.uint8), [SceneObject("star", 3, (3, 2, 6, 4), mask)], seed=1)
    _, _, objs = _parse_voc(scene_to_voc_xml(sc, "x.jpg"))
    assert objs == [("star", 0, (4, 3, 7, 5))]
