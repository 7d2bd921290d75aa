"""Faults found when the evaluation runner was tried against failures (issue 9, part 4): each test
reproduces one, on the public interfaces (run_evaluation, the scenes cache, the command line)."""
import json
import os
import threading

import numpy as np
import pytest
import torch

from clrp import cli, scenes
from clrp.datasets import VocDataset
from clrp.errors import ClrpError
from clrp.evaluation import runner as R

from .test_runner import SETTINGS, _frames, _model, _voc


def _all_rows(out):
    return {p: len(df) for p, df in _frames(out).items()}


@pytest.fixture()
def reference(tmp_path):
    _voc(str(tmp_path / "voc"))
    ref = str(tmp_path / "ref")
    R.run_evaluation(VocDataset(str(tmp_path / "voc")), _model(), ref, **dict(SETTINGS, batch_size=1))
    return tmp_path, _frames(ref)


def _same_rows(a, b):
    for p in b:
        cols = [c for c in b[p].columns if c != "scores"]
        assert a[p][cols].equals(b[p][cols]), p


def test_a_torn_last_progress_line_loses_nothing(reference):
    tmp, expected = reference
    out = str(tmp / "torn")
    settings = dict(SETTINGS, batch_size=1)
    R.run_evaluation(VocDataset(str(tmp / "voc")), _model(), out, limit=2, **settings)
    with open(os.path.join(out, "progress.jsonl"), "a", encoding="utf-8") as f:
        f.write('{"batch": 3, "image_ids": ["00')  # the process died while writing a record
    R.run_evaluation(VocDataset(str(tmp / "voc")), _model(), out, **settings)
    _same_rows(_frames(out), expected)
    R.run_evaluation(VocDataset(str(tmp / "voc")), _model(), out, **settings)  # and stays complete
    _same_rows(_frames(out), expected)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbage"])
def test_missing_or_corrupt_parts_are_redone_on_resume(reference, damage):
    tmp, expected = reference
    out = str(tmp / damage)
    settings = dict(SETTINGS, batch_size=1)
    R.run_evaluation(VocDataset(str(tmp / "voc")), _model(), out, **settings)
    part = os.path.join(out, "pointing", "part-000002.parquet")
    assert os.path.exists(part)
    if damage == "deleted":
        os.remove(part)
    elif damage == "truncated":
        with open(part, "r+b") as f:
            f.truncate(os.path.getsize(part) // 2)
    else:
        with open(part, "wb") as f:
            f.write(b"not parquet at all")
    r = R.run_evaluation(VocDataset(str(tmp / "voc")), _model(), out, **settings)
    assert r.images_new == 1  # exactly the affected image is redone
    _same_rows(_frames(out), expected)


def test_two_runs_on_one_folder_refuse_each_other(tmp_path, monkeypatch):
    _voc(str(tmp_path / "voc"))
    out = str(tmp_path / "out")
    started, release = threading.Event(), threading.Event()
    real = R._process_batch

    def slow(*a, **k):
        started.set()
        release.wait(60)
        return real(*a, **k)

    monkeypatch.setattr(R, "_process_batch", slow)
    errors = []
    first = threading.Thread(target=lambda: R.run_evaluation(VocDataset(str(tmp_path / "voc")), _model(), out,
                                                              **SETTINGS))
    first.start()
    try:
        assert started.wait(60)
        monkeypatch.setattr(R, "_process_batch", real)
        with pytest.raises(ClrpError, match="in use by another run"):
            R.run_evaluation(VocDataset(str(tmp_path / "voc")), _model(), out, **SETTINGS)
    except BaseException as exc:
        errors.append(exc)
    finally:
        release.set()
        first.join(60)
    assert not errors, errors
    assert _all_rows(out)["pointing"] == 7 * 3  # the first run finished alone, every batch once


def test_settings_record_what_was_used(tmp_path):
    _voc(str(tmp_path / "voc"))
    out = str(tmp_path / "out")
    lm = _model()
    R.run_evaluation(VocDataset(str(tmp_path / "voc")), lm, out, **dict(SETTINGS, methods=("lrp", "gradcam")))
    s = json.load(open(os.path.join(out, "settings.json")))
    used = s["method_options"]
    assert used["lrp"]["box"] == [list(map(float, b)) for b in lm.preprocessing.box]
    assert used["gradcam"]["layer"] == "4"  # the resolved default layer, not null
    assert s["ablation_layer"] == "4"


def _complete(root, n, seed):
    expected = sum(len(scenes.generate_scene(seed + i).objects) for i in range(n))
    return (os.path.isfile(os.path.join(root, "complete.json"))
            and len(os.listdir(os.path.join(root, "Annotations"))) == n
            and len(os.listdir(os.path.join(root, "Masks"))) == expected)


def test_concurrent_workers_share_one_scene_cache(tmp_path, monkeypatch):
    """The documented sharding workflow: two workers start on one --cache-dir. Whichever returns
    first must see a complete cache, and no worker may delete files the other relies on."""
    import pathlib
    real_export, real_write = scenes.export_voc, pathlib.Path.write_bytes
    a_half, b_started, a_go, b_go = (threading.Event() for _ in range(4))
    writes = {"a": 0}

    def paced_write(self, data):
        if threading.current_thread().name == "a":
            writes["a"] += 1
            if writes["a"] == 20:  # a is half-way through writing its files
                a_half.set()
                a_go.wait(60)
        return real_write(self, data)

    def paced_export(it, dest, **kw):
        def paced():
            for k, sc in enumerate(it):
                if threading.current_thread().name == "b" and k == 0:
                    b_started.set()
                    b_go.wait(60)
                yield sc
        return real_export(paced(), dest, **kw)

    monkeypatch.setattr(pathlib.Path, "write_bytes", paced_write)
    monkeypatch.setattr(scenes, "export_voc", paced_export)
    paths = {}
    threads = {n: threading.Thread(name=n, target=lambda n=n: paths.__setitem__(
        n, cli.scenes_dataset_dir(12, 7, str(tmp_path)))) for n in "ab"}
    threads["a"].start()
    assert a_half.wait(60)
    threads["b"].start()
    b_started.wait(2)  # old code: b deletes a's half-written folder and generates; now b waits on a's lock
    a_go.set()
    threads["a"].join(60)
    assert _complete(paths["a"], 12, 7)  # what a returns is complete while b still works
    b_go.set()
    threads["b"].join(60)
    assert paths["a"] == paths["b"] and _complete(paths["a"], 12, 7)
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]  # no temporary folder left


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only", "no permission"])
def test_filesystem_errors_on_out_are_one_line_errors(tmp_path, capsys, monkeypatch, case):
    torch.manual_seed(0)
    from clrp.models import build_architecture
    net = build_architecture("scene_vgg", len(scenes.CLASS_NAMES))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    (tmp_path / "classes.txt").write_text("\n".join(scenes.CLASS_NAMES))
    out = tmp_path / "out"
    if case == "a file":
        out.write_text("x")
    elif case == "under a file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "out"
    else:  # the machine's user may be root, who ignores permissions: simulate what the OS says
        import errno
        real_makedirs = os.makedirs

        def refuse(path, *a, **k):
            if str(path).startswith(str(out)):
                raise OSError(errno.EROFS if case == "read-only" else errno.EACCES, os.strerror(
                    errno.EROFS if case == "read-only" else errno.EACCES), str(path))
            return real_makedirs(path, *a, **k)
        monkeypatch.setattr(os, "makedirs", refuse)
    code = cli.main(["evaluate", "--dataset", "scenes:2", "--cache-dir", str(tmp_path / "cache"), "--model", "t",
                     "--architecture", "scene_vgg", "--weights", str(tmp_path / "w.pt"), "--class-names",
                     str(tmp_path / "classes.txt"), "--methods", "lrp", "--protocols", "pointing", "--out", str(out),
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert str(out) in lines[0] or os.path.basename(str(out)) in lines[0]


def test_a_run_from_before_an_option_was_added_can_be_continued(tmp_path):
    _voc(str(tmp_path / "voc"))
    out = str(tmp_path / "out")
    R.run_evaluation(VocDataset(str(tmp_path / "voc")), _model(), out, limit=2, **SETTINGS)
    path = os.path.join(out, "settings.json")
    s = json.load(open(path))
    del s["options"]["pointing"]["convention"]  # as written before the option existed
    json.dump(s, open(path, "w"))
    r = R.run_evaluation(VocDataset(str(tmp_path / "voc")), _model(), out, **SETTINGS)
    assert r.images_done == 5
    with pytest.raises(ClrpError, match=r"different settings \(protocol options\)"):
        R.run_evaluation(VocDataset(str(tmp_path / "voc")), _model(), out, **dict(SETTINGS, tolerance=3.0))


def _damage_data_pages(path):
    """Overwrite a Parquet file's data pages with garbage, leaving its footer (the metadata with
    the row count) and magic bytes intact: the footer still reads, the rows do not."""
    import pyarrow.parquet as pq

    with open(path, "rb") as f:
        data = bytearray(f.read())
    footer = int.from_bytes(data[-8:-4], "little")
    end = len(data) - 8 - footer
    data[4:end] = bytes([0xFF]) * (end - 4)
    with open(path, "wb") as f:
        f.write(data)
    assert pq.ParquetFile(path).metadata.num_rows > 0  # the footer is intact
    with pytest.raises(Exception):
        pq.read_table(path)  # the data is not


def test_a_part_with_damaged_data_and_an_intact_footer_is_redone(reference):
    """Issue 16 item 6: verify read only the footer's row count, so such a part was never redone and
    every resume evaluated 0 images and failed again."""
    tmp, expected = reference
    out = str(tmp / "pages")
    settings = dict(SETTINGS, batch_size=1)
    R.run_evaluation(VocDataset(str(tmp / "voc")), _model(), out, **settings)
    _damage_data_pages(os.path.join(out, "perturbation", "part-000002.parquet"))
    r = R.run_evaluation(VocDataset(str(tmp / "voc")), _model(), out, **settings)
    assert r.images_new == 1  # exactly the affected image is redone
    _same_rows(_frames(out), expected)


def test_disk_full_while_writing_the_results_tables_is_one_line_and_resumable(tmp_path, capsys, monkeypatch):
    """Issue 16 item 6: ENOSPC when a results table is closed gave a pyarrow traceback and exit 1."""
    import errno

    import pyarrow.parquet as pq

    from .test_cli import _eval
    torch.manual_seed(0)
    from clrp.models import build_architecture
    torch.save(build_architecture("scene_vgg", len(scenes.CLASS_NAMES)).state_dict(), tmp_path / "rand.pt")
    (tmp_path / "classes.txt").write_text("\n".join(scenes.CLASS_NAMES))
    out = tmp_path / "run"
    assert _eval(tmp_path, out, dataset="scenes:2") == 0
    real_close = pq.ParquetWriter.close
    calls = []

    def full(self, *a, **k):  # the file's last bytes do not fit on the disk
        calls.append(1)
        real_close(self, *a, **k)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pq.ParquetWriter, "close", full)
    capsys.readouterr()
    code = _eval(tmp_path, out, "--resume", dataset="scenes:2")  # nothing left to evaluate: writes the tables
    err = capsys.readouterr().err
    assert calls, "the results table was not written through ParquetWriter"
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert os.strerror(errno.ENOSPC) in lines[0] and "results" in lines[0]
    assert not [f for f in os.listdir(out / "results") if ".tmp" in f]  # nothing half-written left
    monkeypatch.setattr(pq.ParquetWriter, "close", real_close)  # space freed: the same command finishes
    assert _eval(tmp_path, out, "--resume", dataset="scenes:2") == 0
    assert len(pq.read_table(out / "results" / "pointing.parquet")) > 0


def test_random_draws_are_per_image(tmp_path):
    """Issue 16 item 6: the random region order, the tie order and the noise baseline used one
    permutation (the run seed's) for every image, so two equal images got equal random curves. Each
    image now draws from its own seed, derived from the run seed and its id and recorded per row,
    the same whatever batch it is evaluated in."""
    import shutil

    from clrp.evaluation.protocol import image_seed

    root = str(tmp_path / "voc")
    _voc(root)
    shutil.copy(os.path.join(root, "JPEGImages", "000.jpg"), os.path.join(root, "JPEGImages", "100.jpg"))
    xml = open(os.path.join(root, "Annotations", "000.xml")).read().replace("000.jpg", "100.jpg")
    open(os.path.join(root, "Annotations", "100.xml"), "w").write(xml)  # the same image under another id
    settings = dict(SETTINGS, protocols=("perturbation",), orders=("random", "morf"), baseline="noise", seed=3)
    runs = {}
    for bs in (1, 4):
        out = str(tmp_path / f"b{bs}")
        R.run_evaluation(VocDataset(root), _model(), out, **dict(settings, batch_size=bs))
        runs[bs] = _frames(out)["perturbation"]
    df = runs[1]
    assert list(df["seed"]) == [image_seed(3, i) for i in df["image_id"]]  # recorded per row
    assert df["seed"].nunique() == df["image_id"].nunique() > 2
    key = ["class_name", "method", "order"]
    a = df[df["image_id"] == "000"].set_index(key)["scores"]
    b = df[df["image_id"] == "100"].set_index(key)["scores"].loc[a.index]
    assert len(a) == 8  # 2 classes x 2 methods x 2 orders
    for k in a.index:  # equal images, equal maps: only their own draws tell them apart
        assert not np.array_equal(a[k][1:], b[k][1:]), k
        assert a[k][0] == b[k][0]  # step 0 is the unperturbed image: the same
    cols = [c for c in df.columns if c != "scores"]
    assert runs[4][cols].equals(df[cols])  # batches of 4: the same draws per image
