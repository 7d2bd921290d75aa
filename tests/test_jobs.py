"""Old-code reproduction of issue 16: the 6-hour prune deletes archives of queued runs."""
import io
import os
import threading
import time
import zipfile

from dashboard import core


def test_prune_keeps_uploads_of_queued_runs(monkeypatch, tmp_path):
    monkeypatch.setenv(core.DEV_ENV, "1")
    monkeypatch.setenv(core.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.setenv(core.CACHE_ENV, str(tmp_path / "cache"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "x")
    reg = core.RunRegistry(max_parallel=1)
    gate = threading.Event()

    def slow(k):
        gate.wait(60)
        return core.load_model("dev:bundled")
    cfg = {"methods": ["lrp"], "protocols": ["pointing"]}
    first = reg.start("s", "pointing", "dev:bundled", {"kind": "scenes", "n": 1}, cfg, model_loader=slow)
    up = core.save_upload("q.zip", buf.getvalue())
    queued = reg.start("s", "pointing", "dev:bundled", {"kind": "upload", "path": str(up), "name": "q.zip",
                                                        "owned": True}, cfg, model_loader=core.load_model)
    time.sleep(0.5)
    assert queued.state == "queued"
    os.utime(up.parent, (time.time() - core.UPLOAD_MAX_AGE_S - 60,) * 2)
    core.save_upload("other.zip", buf.getvalue())
    try:
        assert up.is_file(), "the queued run's archive was pruned"
    finally:
        gate.set()
        first.wait(60)
        queued.wait(60)
