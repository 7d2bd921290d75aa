"""Messages for hostile or broken user files (issue 11, item 6): they say what is wrong with the
file the user gave, under the name the user knows, and leave nothing behind.

Every hostile file is built here, in tmp_path."""
import io
import os
import pickle
import struct
import tarfile
import tempfile
import zipfile
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from clrp.datasets import UPLOAD_LIMITS, ArchiveLimits, open_dataset, safe_extract
from clrp.errors import ClrpError, DatasetError, ModelLoadError, UnsafeArchive
from clrp.models import Preprocessing, UnsafeWeights
from clrp.models.weights import apply_state_dict, load_state_dict

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotation><filename>a.jpg</filename><object><name>&lol4;</name><difficult>0</difficult>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"""

XXE = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
       "<annotation><filename>b.jpg</filename><object><name>&xxe;</name><difficult>0</difficult>"
       "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")

MALFORMED = "<annotation><filename>c.jpg</filename><object><name>dog"

GOOD = ("<annotation><filename>d.jpg</filename><size><width>20</width><height>20</height></size>"
        "<object><name>unicorn</name><difficult>0</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point tempfile at a folder of its own, so a test can see what an extraction left behind."""
    d = tmp_path / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def _voc_zip(path, annotations: dict, extra: dict = None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, xml in annotations.items():
            zf.writestr(f"VOC/Annotations/{name}.xml", xml)
            zf.writestr(f"VOC/JPEGImages/{name}.jpg", _jpeg())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def _no_internal_paths(msg: str, *paths):
    assert "clrp-dataset-" not in msg and "clrp-upload-" not in msg, msg
    for p in paths:
        assert str(p) not in msg, msg


def _model(names=("dog", "cat")):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    return SimpleNamespace(model=net, class_names=list(names), preprocessing=Preprocessing(input_size=(16, 16)))


# ------------------------------------------------------------------ 1. refused annotations
@pytest.mark.parametrize("which", ["billion_laughs", "external_entity", "malformed", "all"])
def test_dataset_whose_only_annotations_were_refused_says_so(tmp_path, private_tmp, which):
    xml = {"billion_laughs": {"a": BILLION_LAUGHS}, "external_entity": {"b": XXE}, "malformed": {"c": MALFORMED},
           "all": {"a": BILLION_LAUGHS, "b": XXE, "c": MALFORMED}}[which]
    z = _voc_zip(tmp_path / "dataset.zip", xml)
    from clrp.evaluation.runner import run_evaluation

    with open_dataset(str(z), display_name="holiday photos.zip") as ds:
        with pytest.raises(ClrpError) as e:
            run_evaluation(ds, _model(), str(tmp_path / "out"), methods=("gradient",), protocols=("pointing",))
    msg = str(e.value)
    assert isinstance(e.value, DatasetError), msg
    assert "pass mapping" not in msg and "no dataset class maps" not in msg, msg
    assert "holiday photos.zip" in msg and "refused" in msg, msg
    assert f"{len(xml)} of {len(xml)} annotation file" in msg, msg
    for name in xml:
        assert f"{name}.xml" in msg, msg
    if which in ("billion_laughs", "external_entity", "all"):
        assert "unsafe XML" in msg
    if which in ("external_entity", "all"):
        assert "external entity" in msg, msg
    if which in ("malformed", "all"):
        assert "malformed XML" in msg
    _no_internal_paths(msg, tmp_path)
    assert "lollol" not in msg and "root:" not in msg
    assert os.listdir(private_tmp) == []  # the extraction was removed


def test_refused_annotations_are_named_even_when_other_classes_exist(tmp_path, private_tmp):
    z = _voc_zip(tmp_path / "dataset.zip", {"a": BILLION_LAUGHS, "b": XXE, "d": GOOD})
    from clrp.evaluation.runner import run_evaluation

    with open_dataset(str(z), display_name="mixed.zip") as ds:
        with pytest.raises(ClrpError) as e:
            run_evaluation(ds, _model(), str(tmp_path / "out"), methods=("gradient",), protocols=("pointing",))
    msg = str(e.value)
    # the unmapped class is the real reason (the advice to rename stays), but the refused files are named too
    assert "unicorn" in msg and "rename" in msg, msg
    assert "2 of 3 annotation files were refused" in msg and "a.xml" in msg and "b.xml" in msg, msg
    _no_internal_paths(msg, tmp_path)


def test_many_refused_annotations_are_summarised(tmp_path):
    z = _voc_zip(tmp_path / "dataset.zip", {f"{i:03d}": MALFORMED for i in range(30)})
    with open_dataset(str(z)) as ds, pytest.raises(DatasetError) as e:
        ds.map_classes(["dog"])
    msg = str(e.value)
    assert "30 of 30 annotation files were refused" in msg and "000.xml" in msg and "and 25 more" in msg, msg
    assert "029.xml" not in msg and len(msg) < 1500
    assert msg.startswith("dataset.zip:")


# ------------------------------------------------------------------ 2. corrupt archives
def _valid_zip_bytes(tmp_path) -> bytes:
    return _voc_zip(tmp_path / "valid.zip", {"d": GOOD}).read_bytes()


def _valid_tgz_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = os.urandom(200_000)
        ti = tarfile.TarInfo("VOC/JPEGImages/x.bin")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("case", ["truncated_zip", "random_zip", "empty_zip", "truncated_tgz", "random_tgz",
                                  "random_tar"])
def test_corrupt_archive_says_corrupt_archive(tmp_path, private_tmp, case):
    kind = "zip" if "zip" in case else "tar"
    name = {"truncated_zip": "d.zip", "random_zip": "d.zip", "empty_zip": "d.zip", "truncated_tgz": "d.tar.gz",
            "random_tgz": "d.tgz", "random_tar": "d.tar"}[case]
    if case == "truncated_zip":
        data = _valid_zip_bytes(tmp_path)
        data = data[: len(data) // 2]
    elif case == "empty_zip":
        data = b""
    elif case == "truncated_tgz":
        data = _valid_tgz_bytes()
        data = data[: len(data) // 2]
    else:
        data = os.urandom(5000)
    p = tmp_path / "upload" / name
    p.parent.mkdir()
    p.write_bytes(data)
    with pytest.raises(DatasetError) as e:
        open_dataset(str(p), display_name="my data." + name.split(".", 1)[1])
    msg = str(e.value)
    assert "unknown dataset file type" not in msg, msg
    assert f"corrupt or unreadable {kind} archive" in msg, msg
    assert msg.startswith("my data."), msg
    _no_internal_paths(msg, tmp_path)
    assert os.listdir(private_tmp) == []


def test_damaged_zip_member_and_file_folder_clash(tmp_path, private_tmp):
    z = tmp_path / "c.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.txt", "hello world " * 1000)
    data = bytearray(z.read_bytes())
    i = data.find(b"a.txt", 30) + 5 + 20
    data[i:i + 8] = b"\xff" * 8
    z.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as e:
        open_dataset(str(z), display_name="up.zip")
    msg = str(e.value)
    assert msg.startswith("up.zip: corrupt or unreadable zip archive") and "'a.txt'" in msg, msg
    _no_internal_paths(msg, tmp_path)
    z2 = tmp_path / "d.zip"
    with zipfile.ZipFile(z2, "w") as zf:
        zf.writestr("a", "x")
        zf.writestr("a/b", "y")
    with pytest.raises(DatasetError) as e:
        open_dataset(str(z2), display_name="up.zip")
    msg = str(e.value)
    assert msg.startswith("up.zip:") and "'a/b'" in msg, msg
    _no_internal_paths(msg, tmp_path)
    assert os.listdir(private_tmp) == []


# ------------------------------------------------------------------ 3. display names
def test_messages_use_the_display_name_not_the_temp_path(tmp_path, private_tmp):
    z = tmp_path / "dataset.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("stuff/readme.txt", "nothing here")
    with pytest.raises(DatasetError) as e:
        open_dataset(str(z), display_name="cats.zip")
    msg = str(e.value)
    assert msg.startswith("cats.zip") and "no VOC" in msg, msg
    _no_internal_paths(msg, tmp_path)
    # without a display name, the archive's own name (never the extraction folder)
    with pytest.raises(DatasetError) as e:
        open_dataset(str(z))
    assert str(e.value).startswith("dataset.zip") and "clrp-dataset-" not in str(e.value)
    with pytest.raises(DatasetError) as e:
        open_dataset(str(z), format="coco", display_name="cats.zip")
    assert str(e.value).startswith("cats.zip") and "clrp-dataset-" not in str(e.value)
    with pytest.raises(DatasetError) as e:
        open_dataset(str(z), format="voc", display_name="cats.zip")
    assert str(e.value).startswith("cats.zip") and "clrp-dataset-" not in str(e.value)
    assert os.listdir(private_tmp) == []
    # a folder shown under another name (a server folder, relative to its root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as e:
        open_dataset(str(tmp_path / "empty"), display_name="data/empty")
    assert str(e.value).startswith("data/empty:") and str(tmp_path) not in str(e.value)


def test_single_annotation_file_is_named_by_its_display_name(tmp_path):
    p = tmp_path / "upload-3f2a.json"
    p.write_text('{"images": [1, 2, ')  # truncated COCO JSON
    with pytest.raises(DatasetError) as e:
        open_dataset(str(p), display_name="instances_val.json")
    msg = str(e.value)
    assert msg.startswith("instances_val.json:") and "upload-3f2a" not in msg, msg
    _no_internal_paths(msg, tmp_path)
    p2 = tmp_path / "upload-3f2a.bin"
    p2.write_bytes(os.urandom(300))
    with pytest.raises(DatasetError) as e:
        open_dataset(str(p2), display_name="notes.bin")
    assert str(e.value).startswith("notes.bin: unknown dataset file type") and str(tmp_path) not in str(e.value)


def test_problems_of_an_archive_name_files_inside_it(tmp_path, private_tmp):
    good = ("<annotation><filename>{n}.jpg</filename><size><width>20</width><height>20</height></size>"
            "<object><name>dog</name><difficult>0</difficult>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    z = tmp_path / "dataset.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for n in "ab":
            zf.writestr(f"VOC/Annotations/{n}.xml", good.format(n=n))
        zf.writestr("VOC/Annotations/c.xml", MALFORMED)
        zf.writestr("VOC/JPEGImages/a.jpg", _jpeg())
        zf.writestr("VOC/JPEGImages/b.jpg", b"not an image at all")
    with open_dataset(str(z), display_name="dogs.zip") as ds:
        got = [s.image_id for s, _ in ds.iter_images()]
        assert got == ["a"]
        text = "\n".join(str(p) for p in ds.problems)
        assert "c.xml" in text and "b.jpg" in text, text
        _no_internal_paths(text, tmp_path, ds.root)
        cm = ds.map_classes(["dog"])
        assert cm.index == {"dog": 0}
        assert "1 of 3 annotation files were refused" in cm.report()


# ------------------------------------------------------------------ 4. entry counts and sizes first
def _zip_with_entries(path, n: int, size: int = 0):
    """A stored zip of ``n`` entries of ``size`` zero bytes, written directly (fast)."""
    import zlib

    payload = b"\0" * size
    crc = zlib.crc32(payload)
    local, central = [], []
    offset = 0
    for i in range(n):
        name = f"d/f{i}.txt".encode()
        h = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, size, size, len(name), 0) + name + payload
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, size, size, len(name),
                                   0, 0, 0, 0, 0o100644 << 16, offset) + name)
        local.append(h)
        offset += len(h)
    cd = b"".join(central)
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(cd), offset, 0)
    path.write_bytes(b"".join(local) + cd + eocd)
    return path


@pytest.fixture
def no_extraction(monkeypatch):
    """Fail the test if any archive member is opened for reading (i.e. extraction started)."""
    def boom(*a, **k):
        raise AssertionError("a member was read: the archive was not refused before extraction")

    monkeypatch.setattr(zipfile.ZipFile, "open", boom)
    monkeypatch.setattr(tarfile.TarFile, "extractfile", boom)


def test_60000_entry_zip_refused_before_extraction(tmp_path, private_tmp, no_extraction):
    import time

    z = _zip_with_entries(tmp_path / "many.zip", 60_000)
    assert len(zipfile.ZipFile(z).infolist()) == 60_000  # a valid zip
    dest = tmp_path / "dest"
    t0 = time.perf_counter()
    with pytest.raises(UnsafeArchive) as e:
        safe_extract(str(z), str(dest), UPLOAD_LIMITS, display_name="many.zip")
    assert time.perf_counter() - t0 < 1.0  # from the end record: milliseconds (was ~12 s extracting)
    assert "60000 entries" in str(e.value) and str(e.value).startswith("many.zip:")
    assert os.listdir(dest) == []
    with pytest.raises(UnsafeArchive) as e:
        open_dataset(str(z), limits=UPLOAD_LIMITS, display_name="photos.zip")
    assert str(e.value).startswith("photos.zip:") and "entries" in str(e.value)
    assert os.listdir(private_tmp) == []


def test_oversized_zip_refused_from_central_directory(tmp_path, no_extraction):
    z = _zip_with_entries(tmp_path / "big.zip", 5, size=3000)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match="expands to more than 10000 bytes"):
        safe_extract(str(z), str(dest), ArchiveLimits(max_total_bytes=10_000))
    with pytest.raises(UnsafeArchive, match="larger than 2000 bytes"):
        safe_extract(str(z), str(dest), ArchiveLimits(max_file_bytes=2000))
    assert os.listdir(dest) == []


def test_tar_counts_and_sizes_checked_before_writing(tmp_path, no_extraction):
    t = tmp_path / "many.tar"
    with tarfile.open(t, "w") as tf:
        for i in range(300):
            ti = tarfile.TarInfo(f"d/f{i}.txt")
            ti.size = 100
            tf.addfile(ti, io.BytesIO(b"x" * 100))
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match="more than 200 entries"):
        safe_extract(str(t), str(dest), ArchiveLimits(max_files=200), display_name="t.tar")
    with pytest.raises(UnsafeArchive, match="expands to more than 5000 bytes"):
        safe_extract(str(t), str(dest), ArchiveLimits(max_total_bytes=5000))
    assert os.listdir(dest) == []


def test_upload_limits_are_stricter_than_the_defaults():
    from clrp.datasets import DEFAULT_LIMITS

    assert UPLOAD_LIMITS.max_files < 60_000 <= DEFAULT_LIMITS.max_files
    assert UPLOAD_LIMITS.max_total_bytes <= DEFAULT_LIMITS.max_total_bytes


# ------------------------------------------------------------------ 5. weights files
def _assert_no_torch_advice(msg):
    assert "weights_only=False" not in msg and "weights_only` set to `False`" not in msg, msg
    assert "add_safe_globals" not in msg and "arbitrary code" not in msg, msg


@pytest.mark.parametrize("content", ["random", "text", "empty", "truncated", "zip", "protocol4"])
def test_unreadable_weights_are_not_called_unsafe(tmp_path, content):
    p = tmp_path / "model.pt"
    if content == "random":
        data = b"\x80" + os.urandom(4000)  # even with a pickle protocol byte at the start
    elif content == "text":
        data = b"this is not a checkpoint at all"
    elif content == "empty":
        data = b""
    elif content == "truncated":
        buf = io.BytesIO()
        torch.save({"w": torch.zeros(1000)}, buf)
        data = buf.getvalue()[:1500]
    elif content == "protocol4":  # plain tensors, but a pickle protocol the weights-only loader lacks
        buf = io.BytesIO()
        torch.save(torch.nn.BatchNorm2d(2).state_dict(), buf, pickle_protocol=4)  # float and long storages
        data = buf.getvalue()
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("hello.txt", "hi")
        data = buf.getvalue()
    p.write_bytes(data)
    with pytest.raises(ModelLoadError) as e:
        load_state_dict(p, display_name="my-weights.pt")
    msg = str(e.value)
    assert not isinstance(e.value, UnsafeWeights), msg
    assert "my-weights.pt" in msg and "not a readable PyTorch checkpoint" in msg, msg
    if content == "protocol4":
        assert "pickle protocol 4" in msg, msg
    elif content in ("random", "text"):
        assert "not a PyTorch weights file" in msg, msg
    assert str(tmp_path) not in msg
    _assert_no_torch_advice(msg)


class _Payload:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pwned')",))


class _Config:  # an ordinary object in a training checkpoint (not a tensor)
    def __init__(self):
        self.lr = 0.1


@pytest.mark.parametrize("how", ["payload", "config_object", "raw_pickle", "raw_pickle_v4", "payload_v4"])
def test_refused_checkpoint_says_clrp_loads_weights_only(tmp_path, how):
    """Protocol 4+ pickles fail in PyTorch's weights_only unpickler with "Unsupported operand 149"
    (FRAME) before any class is seen: still refused as unsafe, naming what the file imports."""
    p = tmp_path / "ckpt.pt"
    if how == "payload":
        torch.save({"w": _Payload()}, p)
    elif how == "payload_v4":
        torch.save({"w": _Payload()}, p, pickle_protocol=4)
    elif how == "config_object":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "config": _Config()}, p)
    else:
        p.write_bytes(pickle.dumps(_Payload(), protocol=4 if how.endswith("v4") else 2))
    with pytest.raises(UnsafeWeights) as e:
        load_state_dict(p, display_name="ckpt.pt")
    msg = str(e.value)
    assert "objects other than tensors" in msg and "state_dict" in msg and "for safety" in msg, msg
    assert ("exec" if how != "config_object" else "_Config") in msg, msg
    assert str(tmp_path) not in msg
    _assert_no_torch_advice(msg)


def test_unreadable_safetensors(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(os.urandom(100))
    with pytest.raises(ModelLoadError) as e:
        load_state_dict(p, display_name="w.safetensors")
    msg = str(e.value)
    assert "not a readable safetensors file" in msg and str(tmp_path) not in msg, msg


# ------------------------------------------------------------------ 6. state_dict mismatches
def test_every_shape_mismatch_is_reported(tmp_path):
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(30)])
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(25):                      # 25 wrong weights
        sd[f"{i}.weight"] = torch.zeros(3, 5)
    del sd["29.bias"]                        # one missing
    sd["extra.weight"] = torch.zeros(1)      # one unexpected
    with pytest.raises(ModelLoadError) as e:
        apply_state_dict(model, sd, "finetuned.pt")
    msg = str(e.value)
    lines = msg.splitlines()
    assert lines[0].startswith("weights finetuned.pt do not fit the architecture"), msg
    assert "25 tensors have another shape" in msg, msg
    shape_lines = [ln for ln in lines if "model expects" in ln]
    assert len(shape_lines) == 20, msg
    assert "0.weight: model expects (4, 4), file has (3, 5)" in msg
    assert "19.weight" in msg and "20.weight" not in msg and "and 5 more" in msg, msg
    assert "missing" in msg and "29.bias" in msg, msg
    assert "unexpected" in msg and "extra.weight" in msg, msg


def test_missing_and_unexpected_keys_are_capped(tmp_path):
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(40)])
    sd = {f"other.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(ModelLoadError) as e:
        apply_state_dict(model, sd, "x.pt")
    msg = str(e.value)
    assert "80 missing" in msg and "80 unexpected" in msg and "and 60 more" in msg, msg
    assert len(msg) < 4000
