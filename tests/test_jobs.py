"""Issue 16: jobs outside the web server (dashboard.jobs) -- owners and isolation, quotas with
their messages, the upload store (one copy per content, per-user quota, referenced archives never
pruned), private 0700 folders, and a restart that resumes a job exactly once. Waits on states."""
import io
import json
import os
import signal
import stat
import time
import zipfile
from pathlib import Path

import pytest

from clrp.errors import ClrpError
from dashboard import core, jobs, settings
from dashboard.identity import User

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180
ALICE = User("oidc:alice@lab.org", "alice@lab.org", False, "oidc")
BOB = User("oidc:bob@lab.org", "bob@lab.org", False, "oidc")
ADMIN = User("oidc:admin@lab.org", "admin@lab.org", True, "oidc")
CFG = {"methods": ["lrp"], "protocols": ["pointing"], "batch_size": 2}
SCENES = {"kind": "scenes", "n": 2}


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv(core.DEV_ENV, "1")
    monkeypatch.setenv(core.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.setenv(core.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("CLRP_MODELS_CONFIG", raising=False)


def idle(tmp_path, **limits) -> jobs.JobService:
    """A service whose scheduler is not started: jobs stay queued (no worker, fast)."""
    return jobs.JobService(tmp_path / "runs", start=False, limits=settings.LimitSettings(**limits))


def archive(tag: str = "a") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", f"not a dataset {tag}")
    return buf.getvalue()


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


# ---------------------------------------------------------------------------------------------
# Owners

def test_a_user_cannot_list_get_or_cancel_another_users_job_an_admin_can(tmp_path):
    svc = idle(tmp_path, jobs_queued_per_user=5)
    a = svc.submit(ALICE, "pointing", "dev:bundled", SCENES, CFG, label="alice's run")
    b = svc.submit(BOB, "ablation", "dev:bundled", SCENES, CFG)
    assert [j.id for j in svc.list(ALICE)] == [a.id] and [j.id for j in svc.list(BOB)] == [b.id]
    assert svc.list(ALICE, "ablation") == [] and [j.id for j in svc.list(BOB, "ablation")] == [b.id]
    # Bob guessing Alice's id: not found, not cancelled
    assert svc.get(BOB, a.id) is None and svc.cancel(BOB, a.id) is False
    assert svc.store.get(a.id).state == "queued" and not svc.store.get(a.id).cancel_requested
    with pytest.raises(ClrpError, match="only an admin"):
        svc.list_all(BOB)
    # the admin sees both and cancels Alice's
    assert {j.id for j in svc.list_all(ADMIN)} == {a.id, b.id}
    assert svc.get(ADMIN, a.id).label == "alice's run"
    assert svc.cancel(ADMIN, a.id) is True
    assert svc.get(ALICE, a.id).state == "cancelled" and svc.get(BOB, b.id).state == "queued"
    assert svc.cancel(ALICE, a.id) is False  # ended


def test_run_folders_are_private_and_named_by_random_tokens(tmp_path):
    svc = idle(tmp_path)
    j = svc.submit(ALICE, "pointing", "dev:bundled", SCENES, CFG, upload=("voc.zip", archive()))
    runs = tmp_path / "runs"
    owner_dir = Path(j.out_dir).parent
    assert owner_dir.parent == runs and "alice" not in str(owner_dir) and len(owner_dir.name) >= 24
    assert len(j.id.split("-")[-1]) == 16  # 64 random bits after the time stamp
    up = Path(j.source["path"])
    for d in (runs, owner_dir, up.parent, runs / "uploads"):
        assert mode(d) == 0o700, d
    assert mode(up) == 0o600 and mode(runs / jobs.STORE_FILE) == 0o600
    assert "alice" not in str(up)


def test_reused_folders_are_checked_for_owner_and_mode(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    os.chmod(mine, 0o755)
    assert core.private_dir(mine) == mine and mode(mine) == 0o700  # ours, only readable: tightened
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(ClrpError, match="others may write"):
        core.private_dir(shared)
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(ClrpError, match="not a folder"):
        core.private_dir(link)
    # the default folder under the temp dir, made first by another user: refused
    import tempfile

    monkeypatch.delenv(core.RUNS_ENV)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert core.runs_dir() == tmp_path / "tmp" / f"clrp-dashboard-{os.getuid()}" / "runs"
    monkeypatch.setattr(os, "getuid", lambda: 4242)  # as if the folder had been made by uid != ours
    (tmp_path / "tmp" / "clrp-dashboard-4242").mkdir(mode=0o700)
    with pytest.raises(ClrpError, match="belongs to another user"):
        core.runs_dir()


# ---------------------------------------------------------------------------------------------
# Quotas

def test_job_quotas_refuse_with_the_limit_and_its_value(tmp_path):
    svc = idle(tmp_path, jobs_running_per_user=1, jobs_queued_per_user=2, jobs_queued_server=4)
    for _ in range(3):
        svc.submit(ALICE, "pointing", "dev:bundled", SCENES, CFG)
    with pytest.raises(ClrpError) as e:
        svc.submit(ALICE, "pointing", "dev:bundled", SCENES, CFG)
    assert "jobs_running_per_user = 1" in str(e.value) and "jobs_queued_per_user = 2" in str(e.value)
    svc.submit(BOB, "pointing", "dev:bundled", SCENES, CFG)  # another user still may
    with pytest.raises(ClrpError, match="jobs_queued_server = 4"):
        svc.submit(ADMIN, "pointing", "dev:bundled", SCENES, CFG)
    svc.cancel(ALICE, svc.list(ALICE)[0].id)  # an ended job frees its place
    svc.submit(ALICE, "pointing", "dev:bundled", SCENES, CFG)
    assert len([j for j in svc.list_all(ADMIN) if j.active]) == 4


def test_limits_come_from_the_lab_toml_and_unknown_keys_are_errors(tmp_path, monkeypatch):
    assert settings.server_settings().limits == settings.LimitSettings()  # no file: safe defaults
    toml = tmp_path / "lab.toml"
    monkeypatch.setenv("CLRP_MODELS_CONFIG", str(toml))
    toml.write_text("[server.limits]\njobs_running_server = 2\nupload_bytes_per_user = 1000\n")
    lim = settings.server_settings().limits
    assert (lim.jobs_running_server, lim.upload_bytes_per_user, lim.jobs_queued_per_user) == (2, 1000, 3)
    for text, words in [("[server.limits]\njobs_per_user = 2\n", "unknown key(s) jobs_per_user"),
                        ("[server.limits]\njobs_running_server = 0\n", "at least 1"),
                        ("[server.limits]\njobs_queued_server = \"many\"\n", "must be an integer"),
                        ("[server]\nlimit = 1\n", "unknown key(s) in [server]: limit")]:
        toml.write_text(text)
        os.utime(toml, ns=(time.time_ns(), time.time_ns() + 1))  # a new mtime: read again
        with pytest.raises(ClrpError) as e:
            settings.server_settings()
        assert words in str(e.value), str(e.value)


def test_upload_store_one_copy_per_content_and_a_per_user_quota(tmp_path):
    data = archive()
    svc = idle(tmp_path, upload_bytes_per_user=len(data) * 2 + 10, jobs_queued_per_user=10)
    j1 = svc.submit(ALICE, "pointing", "dev:bundled", {}, CFG, upload=("one.zip", data))
    j2 = svc.submit(ALICE, "pointing", "dev:bundled", {}, CFG, upload=("same again.zip", data))
    assert j1.source["path"] == j2.source["path"] and svc.upload_bytes(ALICE.id) == len(data)  # one copy
    assert j2.settings()["dataset"]["path"] == "same again.zip"  # each job keeps the user's name
    jb = svc.submit(BOB, "pointing", "dev:bundled", {}, CFG, upload=("one.zip", data))
    assert Path(jb.source["path"]).parent != Path(j1.source["path"]).parent  # per user
    svc.submit(ALICE, "pointing", "dev:bundled", {}, CFG, upload=("two.zip", archive("b")))
    with pytest.raises(ClrpError) as e:
        svc.submit(ALICE, "pointing", "dev:bundled", {}, CFG, upload=("three.zip", archive("c")))
    assert f"upload_bytes_per_user = {len(data) * 2 + 10}" in str(e.value)
    assert len([j for j in svc.list(ALICE) if j.active]) == 3  # the refused upload made no job
    # cancelling both jobs of the first archive frees its bytes, and the third fits
    svc.cancel(ALICE, j1.id)
    assert Path(j2.source["path"]).is_file()  # still read by j2
    svc.cancel(ALICE, j2.id)
    assert not Path(j2.source["path"]).exists()
    svc.submit(ALICE, "pointing", "dev:bundled", {}, CFG, upload=("three.zip", archive("c")))


def test_prune_never_deletes_the_archive_of_a_queued_job(tmp_path):
    """The 6-hour prune used to delete archives of runs still waiting in the queue (the test
    committed before this module failed on the old RunRegistry)."""
    svc = idle(tmp_path, jobs_queued_per_user=10)
    queued = svc.submit(ALICE, "pointing", "dev:bundled", {}, CFG, upload=("q.zip", archive("q")))
    ended = svc.submit(ALICE, "pointing", "dev:bundled", {}, CFG, upload=("e.zip", archive("e")))
    # an ended job whose archive is still stored (a worker killed before it released it)
    with svc.store._tx() as db:
        db.execute("UPDATE jobs SET state = 'failed' WHERE id = ?", (ended.id,))
    later = time.time() + jobs.UPLOAD_MAX_AGE_S + 60
    assert svc.prune_uploads(now=later) == 1
    assert Path(queued.source["path"]).is_file() and not Path(ended.source["path"]).exists()


# ---------------------------------------------------------------------------------------------
# Workers: scheduling, cancel, restart

def test_progress_estimate_counts_the_current_batch_and_a_cancel_stops_inside_it():
    job = jobs.Job("r", "u", "ablation", "m", {}, {}, "/nonexistent", state="running", total=4)
    flushed, cancel = [], []
    rep = jobs.Reporter(job, lambda j: flushed.append(j.done), lambda: bool(cancel), interval=3600)
    assert job.progress_estimate() == (0.0, None)  # no time promised before the first image
    job.work_started = 100.0
    rep.tick("explanations", 20)
    rep.tick("perturbation steps", 80)
    rep.batch_done(1, 4)                              # 100 units for the first image
    rep.tick("perturbation steps", 50)                # half of the second
    f, left = job.progress_estimate(now=110.0)
    assert f == pytest.approx(1.5 / 4)
    assert left == pytest.approx(10.0 * (1 - f) / f)
    assert flushed[-1] == 1  # a batch is always recorded
    cancel.append(1)
    rep.interval = 0
    with pytest.raises(jobs.Cancelled):              # a cancel stops inside the batch
        rep.tick("perturbation steps", 1)


def _wait_for(pred, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_running_slots_per_user_and_per_server(tmp_path):
    svc = idle(tmp_path, jobs_running_server=2, jobs_running_per_user=1)
    long = {"kind": "scenes", "n": 200}
    a1 = svc.submit(ALICE, "pointing", "dev:bundled", long, CFG)
    a2 = svc.submit(ALICE, "pointing", "dev:bundled", long, CFG)
    b1 = svc.submit(BOB, "pointing", "dev:bundled", long, CFG)
    try:
        svc.schedule()
        states = {j.id: j.state for j in svc.list_all(ADMIN)}
        assert states == {a1.id: "running", a2.id: "queued", b1.id: "running"}  # Alice's second one waits
        svc.schedule()
        assert svc.get(ALICE, a2.id).state == "queued"
    finally:
        for j in (a1, a2, b1):
            svc.store.update(j.id, cancel_requested=True)
        svc.start()
        for j in (a1, a2, b1):
            assert not svc.wait(ADMIN, j.id, TIMEOUT).active
        svc.stop()
    assert {svc.get(ADMIN, j.id).state for j in (a1, a2, b1)} == {"cancelled"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_restarted_service_follows_a_live_worker_and_resumes_a_dead_one_exactly_once(tmp_path):
    """Start a job, stop the service: its worker keeps going and a new service on the same store
    lists it and starts no second worker. Kill the worker: two new services find the job without
    a worker and exactly one resumes it; it completes with every image evaluated once."""
    n = 16
    first = jobs.JobService(tmp_path / "runs")
    job = first.submit(ALICE, "pointing", "dev:bundled", {"kind": "scenes", "n": n}, CFG)
    _wait_for(lambda: first.store.get(job.id).done >= 2, "the first batches")
    first.stop()  # the server goes away; the worker does not
    pid = first.store.one("SELECT pid FROM jobs WHERE id = ?", (job.id,))[0]
    assert _pid_alive(pid)
    # the worker runs below the server's priority with the configured torch threads
    lim = settings.LimitSettings()
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + lim.worker_nice)
    env = dict(e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e)
    assert env["OMP_NUM_THREADS"] == str(lim.threads())
    second = jobs.JobService(tmp_path / "runs")
    try:
        assert [j.id for j in second.list(ALICE)] == [job.id] and second.get(ALICE, job.id).state == "running"
        done = second.get(ALICE, job.id).done
        _wait_for(lambda: second.store.get(job.id).done > done, "progress with the first worker")
        assert second.get(ALICE, job.id).attempts == 1  # followed, not restarted
        os.kill(pid, signal.SIGKILL)  # now the worker dies mid-run
        _wait_for(lambda: not _pid_alive(pid) or _zombie(pid), "the worker's death")
        third = jobs.JobService(tmp_path / "runs")  # and a second server on the same store
        try:
            final = second.wait(ALICE, job.id, TIMEOUT)
        finally:
            third.stop()
    finally:
        second.stop()
    assert final.state == "done" and final.done == n and final.attempts == 2, (final.state, final.message)
    s = json.loads((Path(job.out_dir) / "settings.json").read_text())
    assert len(s.get("resumed", [])) == 1  # resumed exactly once
    res, _ = core.run_results(job.out_dir)
    rows = res["pointing"]
    assert rows["image_id"].nunique() == n
    assert not rows.duplicated(["image_id", "class_name", "method"]).any()  # nothing evaluated twice


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_a_job_whose_worker_keeps_dying_ends_interrupted_with_its_results(tmp_path):
    svc = idle(tmp_path)
    job = svc.submit(ALICE, "pointing", "dev:bundled", SCENES, CFG)
    with svc.store._tx() as db:  # as if MAX_ATTEMPTS workers had died on it
        db.execute("UPDATE jobs SET state = 'running', attempts = ? WHERE id = ?", (jobs.MAX_ATTEMPTS, job.id))
    svc.schedule()
    j = svc.get(ALICE, job.id)
    assert j.state == "interrupted" and f"stopped {jobs.MAX_ATTEMPTS} times" in j.message


def test_a_cancel_of_a_job_without_worker_ends_it_cancelled(tmp_path):
    svc = idle(tmp_path)
    job = svc.submit(ALICE, "pointing", "dev:bundled", SCENES, CFG, upload=("x.zip", archive()))
    with svc.store._tx() as db:  # its worker died; the user cancelled meanwhile
        db.execute("UPDATE jobs SET state = 'running', cancel = 1, attempts = 1 WHERE id = ?", (job.id,))
    svc.schedule()
    assert svc.get(ALICE, job.id).state == "cancelled" and not Path(job.source["path"]).exists()


# ---------------------------------------------------------------------------------------------
# The page: two users

def test_two_users_do_not_see_each_others_runs_on_the_pointing_game_page(monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from dashboard import identity

    who = {"user": ALICE}
    monkeypatch.setattr(identity, "current_user", lambda: who["user"])

    def page():
        at = AppTest.from_file(str(ROOT / "pages" / "4_Pointing_Game.py"), default_timeout=TIMEOUT)
        at.session_state["clrp_model_key"] = "dev:bundled"
        return at.run()

    at = page()
    at.number_input(key="pointing_n").set_value(1).run()
    at.multiselect(key="pg_methods").set_value(["lrp"]).run()
    at.button(key="pointing_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    rid = at.session_state["pointing_current"]
    assert jobs.service().wait(ALICE, rid, TIMEOUT).state == "done"
    # Alice reloads (a new session): her run is listed with its results
    at = page()
    assert not at.exception
    assert rid in at.selectbox(key="pointing_past").options
    assert any(rid in m.value for m in at.markdown)
    # Bob, a new session: nothing of Alice's, and her id typed into his session shows nothing
    who["user"] = BOB
    at = page()
    assert not at.exception and not at.error
    assert not any(rid in str(e.value) for e in [*at.markdown, *at.selectbox, *at.dataframe])
    at.session_state["pointing_current"] = rid
    at.run()
    assert not at.exception and not any(rid in m.value for m in at.markdown)
    assert not at.get("download_button")
    # the admin sees it under every user's runs
    who["user"] = ADMIN
    at = page()
    assert any(rid in str(d.value.to_dict()) for d in at.dataframe)
