"""Jobs outside the web server: evaluations and duration estimates run by worker processes; the
Streamlit server only submits, polls and renders. No Streamlit in here.

- **Store**: one SQLite file in the runs root (``jobs.sqlite``, WAL). Jobs (owner, settings, state,
  progress), users' uploads and their folders' tokens. SQLite rather than the run folders: a quota
  check and the claim of a queued job are single transactions shared by the server and its
  workers (several servers on one store stay correct), and "this user's jobs" is a query, not a
  scan of folders. Results stay in the run folders (:mod:`clrp.evaluation.runs`), resumable.
- **Workers**: ``python -m dashboard.jobs run STORE JOB`` per job, started by the service in a
  session of its own, at a lower OS priority (``worker_nice``) with ``worker_threads`` torch
  threads. The run itself goes where the lab TOML says (:func:`clrp.evaluation.distributed.lab_executor`):
  in the worker, or on the lab's Ray cluster with the worker as the driver.
- **Liveness**: each running job holds an ``flock`` on ``locks/<job>.lock``, taken by the service
  before it starts the worker and inherited by the worker, so it is held from the claim until
  the worker exits (the OS releases it when the worker dies). A job recorded as running whose
  lock is free has lost its worker: a service takes the lock and starts a worker that resumes the
  run folder (:data:`MAX_ATTEMPTS` at most; then "interrupted", results so far kept). The lock
  makes a second worker on one job impossible, so a job is never run twice.
- **Owners**: every call takes the :class:`dashboard.identity.User`; a user sees and cancels their
  own jobs, an admin everyone's. Another user's job id is "not found", never "forbidden".
- **Quotas** (:class:`dashboard.settings.LimitSettings`): refused at submit with a message naming
  the limit and its value; running slots are kept by the scheduler.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no local job service
    fcntl = None

from clrp.errors import ClrpError, DatasetError

from . import core
from .settings import LimitSettings, server_settings

STORE_FILE = "jobs.sqlite"
ACTIVE = ("queued", "running")
#: How many times a job whose worker died is resumed before it is marked interrupted.
MAX_ATTEMPTS = 3
#: Unreferenced uploads older than this are deleted (referenced ones never are).
UPLOAD_MAX_AGE_S = 6 * 3600
#: Kinds of jobs: what a worker runs for each. Evaluations are resumable; estimates are not.
EVALUATION_KINDS = ("pointing", "ablation")
ESTIMATE = "estimate"
_ROOT = Path(__file__).resolve().parents[1]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL, model_key TEXT, source TEXT, config TEXT,
  out_dir TEXT, label TEXT, state TEXT NOT NULL, done INTEGER DEFAULT 0, total INTEGER, message TEXT DEFAULT '',
  detail TEXT DEFAULT '', created REAL, started REAL, finished REAL, problems TEXT DEFAULT '[]',
  units TEXT DEFAULT '{}', work_started REAL, units_at_batch INTEGER DEFAULT 0, cancel INTEGER DEFAULT 0,
  attempts INTEGER DEFAULT 0, upload TEXT, pid INTEGER);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created);
CREATE TABLE IF NOT EXISTS uploads (
  owner TEXT NOT NULL, sha TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, used REAL NOT NULL,
  PRIMARY KEY (owner, sha));
CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, token TEXT UNIQUE NOT NULL);
"""


class Cancelled(Exception):
    """Raised inside a worker's progress callbacks to stop a run (what finished stays)."""


# ---------------------------------------------------------------------------------------------
# A job as the pages see it

@dataclass
class Job:
    id: str
    owner: str
    kind: str                       # "pointing" | "ablation" (the page that started it) | "estimate"
    model_key: str
    source: dict
    config: dict                    # RunConfig fields
    out_dir: str
    label: str = ""
    state: str = "queued"           # queued | running | done | cancelled | failed | interrupted
    done: int = 0
    total: Optional[int] = None
    message: str = ""
    detail: str = ""
    created: float = field(default_factory=time.time)
    started: Optional[float] = None
    finished: Optional[float] = None
    problems: list = field(default_factory=list)
    units: dict = field(default_factory=dict)     # work inside batches: explanations, perturbation steps, ...
    work_started: Optional[float] = None          # model loaded and dataset opened
    units_at_batch: int = 0                       # sum(units) when the last batch was written
    cancel_requested: bool = False
    attempts: int = 0
    upload: Optional[str] = None                  # content hash of the owner's archive it reads

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        if not self.total:
            return 0.0
        return max(0.0, min(1.0, self.done / self.total))

    def progress_estimate(self, now: Optional[float] = None) -> tuple[float, Optional[float]]:
        """``(fraction done, seconds left or None)``: images done plus the share of the current
        batch's work (its units against the units per image so far), extrapolated at the
        measured rate. No time is promised before the first image is done."""
        if self.state == "done":
            return 1.0, 0.0
        if not self.total or not self.done or self.work_started is None:
            return self.fraction, None
        units = sum(self.units.values())
        per_image = self.units_at_batch / self.done if self.units_at_batch else 0.0
        partial = min(1.0, (units - self.units_at_batch) / per_image) if per_image else 0.0
        f = max(0.0, min(1.0, (self.done + partial) / self.total))
        elapsed = (now or time.time()) - self.work_started
        return f, (elapsed * (1 - f) / f if f > 0 else None)

    def settings(self) -> dict:
        """What a user downloads as JSON: enough to reproduce the run (no server paths)."""
        import clrp

        return {"run_id": self.id, "kind": self.kind, "model": self.model_key, "dataset": public_source(self.source),
                "config": self.config, "clrp_version": clrp.__version__}


def public_source(source: dict) -> dict:
    s = dict(source)
    if s.get("kind") == "upload":
        s["path"] = s.get("name", "uploaded archive")
        s.pop("name", None)
    return s


_JSON_COLUMNS = {"source": dict, "config": dict, "problems": list, "units": dict}


def _job(row: sqlite3.Row) -> Job:
    d = dict(row)
    for k in _JSON_COLUMNS:
        d[k] = json.loads(d[k]) if d.get(k) else _JSON_COLUMNS[k]()
    d["cancel_requested"] = bool(d.pop("cancel"))
    d.pop("pid", None)
    return Job(**d)


# ---------------------------------------------------------------------------------------------
# Progress inside a worker

class Reporter:
    """A worker's progress callbacks (``clrp.evaluation.progress`` ticks and the runner's batch
    callback) kept on a local :class:`Job`; ``flush(job)`` records it (at most every
    ``interval`` seconds for ticks, always for a batch) and ``cancelled()`` is asked at the same
    moments: a cancel stops a batch at its next tick."""

    def __init__(self, job: Job, flush: Callable[[Job], None], cancelled: Callable[[], bool], interval: float = 0.5):
        self.job, self._flush, self._cancelled, self.interval = job, flush, cancelled, interval
        self._last = 0.0

    def _check(self, force: bool) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self._flush(self.job)
            if self._cancelled():
                raise Cancelled()

    def tick(self, unit: str, n: int) -> None:
        self.job.units[unit] = self.job.units.get(unit, 0) + int(n)
        self._check(False)

    def batch_done(self, done: int, total: Optional[int]) -> None:
        self.job.done = int(done)
        if total:
            self.job.total = int(total)
        self.job.units_at_batch = sum(self.job.units.values())
        self._check(True)


# ---------------------------------------------------------------------------------------------
# The store

class JobStore:
    """SQLite access shared by the service (in the web server) and the workers."""

    def __init__(self, root: str | os.PathLike):
        self.root = core.private_dir(root)
        self.path = self.root / STORE_FILE
        with self._connect() as db:
            _one(db, "PRAGMA journal_mode=WAL")  # persistent in the file
            db.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS); commits by itself
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)

    @contextlib.contextmanager
    def _connect(self):
        """A connection per operation: a long-lived one can keep an old read snapshot (WAL) and
        miss the workers' writes; opening one costs well under a millisecond."""
        if not self.path.exists():
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _tx(self):
        """A write transaction (BEGIN IMMEDIATE: quota checks and claims see no concurrent writer)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def one(self, sql: str, args=()):
        with self._connect() as db:
            return _one(db, sql, args)

    def rows(self, where: str = "1", args=()) -> list[Job]:
        with self._connect() as db:
            cur = db.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY created DESC, id DESC", args)
            return [_job(r) for r in cur.fetchall()]

    def get(self, job_id: str) -> Optional[Job]:
        r = self.rows("id = ?", (job_id,))
        return r[0] if r else None

    def update(self, job_id: str, **cols) -> None:
        for k in _JSON_COLUMNS:
            if k in cols:
                cols[k] = json.dumps(cols[k], default=str)
        if "cancel_requested" in cols:
            cols["cancel"] = int(cols.pop("cancel_requested"))
        sets = ", ".join(f"{k} = ?" for k in cols)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*cols.values(), job_id))

    def progress(self, job: Job) -> None:
        self.update(job.id, done=job.done, total=job.total, units=job.units, units_at_batch=job.units_at_batch)

    def cancel_requested(self, job_id: str) -> bool:
        r = self.one("SELECT cancel FROM jobs WHERE id = ?", (job_id,))
        return bool(r and r[0])

    def lock_path(self, job_id: str) -> Path:
        return core.private_dir(self.root / "locks") / f"{job_id}.lock"

    def owner_token(self, db, owner: str) -> str:
        """A random folder name per owner (owner ids are emails or tokens: never in paths)."""
        r = _one(db, "SELECT token FROM owners WHERE owner = ?", (owner,))
        if r:
            return r[0]
        tok = secrets.token_hex(12)
        db.execute("INSERT INTO owners VALUES (?, ?)", (owner, tok))
        return tok


def _one(db: sqlite3.Connection, sql: str, args=()):
    """The first row of a query, its statement closed: a statement left active keeps the
    connection's read snapshot open (WAL), and it would not see the workers' later writes."""
    cur = db.execute(sql, args)
    try:
        return cur.fetchone()
    finally:
        cur.close()


def _try_lock(path: Path) -> Optional[int]:
    """An fd holding ``flock(path)``, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


# ---------------------------------------------------------------------------------------------
# The service

class JobService:
    """Submit / list / get / cancel jobs of a store, and (``start=True``) the scheduler thread that
    starts workers for queued jobs and resumes jobs whose worker died. Cheap to poll: every read
    is one SQLite query."""

    def __init__(self, root: str | os.PathLike, *, start: bool = True, poll_s: float = 0.3,
                 limits: Optional[LimitSettings] = None):
        self.store = JobStore(root)
        self._limits = limits
        self.poll_s = poll_s
        self._procs: dict[str, subprocess.Popen] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._submit_lock = threading.Lock()
        if start:
            self.start()

    @property
    def limits(self) -> LimitSettings:
        return self._limits or server_settings().limits

    # -- users' calls ------------------------------------------------------------------------
    def submit(self, user, kind: str, model_key: str, source: dict, config: dict, *, label: str = "",
               upload: Optional[tuple[str, bytes]] = None) -> Job:
        """Record a job (queued) for ``user``; ``upload=(name, bytes)`` stores the archive in the
        user's upload store (one copy per content) and points ``source`` at it. Raises
        ``ClrpError`` for bad settings and for every quota, naming the limit and its value."""
        from clrp.evaluation.runner import RunConfig

        if kind not in EVALUATION_KINDS + (ESTIMATE,):
            raise ClrpError(f"unknown job kind {kind!r}")
        RunConfig.build(**config)  # unknown settings: a ClrpError before anything is recorded
        if not config.get("methods"):
            raise ClrpError("choose at least one method")
        # plug-in protocols registered in this process are imported again by the worker process
        from clrp.evaluation.protocol import REGISTRY

        plugins = sorted({f"{type(REGISTRY[p]).__module__}:{type(REGISTRY[p]).__qualname__}"
                          for p in config.get("protocols") or () if p in REGISTRY and not REGISTRY[p].built_in})
        config = {**config, PLUGINS_KEY: plugins} if plugins else config
        # and so are plug-in methods (their records)
        from clrp.method_registry import built_in, reference

        method_refs = sorted(reference(m) for m in config.get("methods") or () if not built_in(m))
        config = {**config, METHOD_PLUGINS_KEY: method_refs} if method_refs else config
        lim = self.limits
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(8)
        src = {k: v for k, v in source.items() if k != "data"}
        with self._submit_lock, self.store._tx() as db:
            mine = _one(db, "SELECT count(*) FROM jobs WHERE owner = ? AND state IN ('queued', 'running')",
                              (user.id,))[0]
            cap = lim.jobs_running_per_user + lim.jobs_queued_per_user
            if mine >= cap:
                raise ClrpError(f"you already have {mine} jobs queued or running: the limit is jobs_running_per_user "
                                f"= {lim.jobs_running_per_user} plus jobs_queued_per_user = {lim.jobs_queued_per_user}; "
                                "wait for one to end or cancel one")
            queued = _one(db, "SELECT count(*) FROM jobs WHERE state = 'queued'")[0]
            if queued >= lim.jobs_queued_server:
                raise ClrpError(f"the server's queue is full: {queued} jobs are waiting, the limit is "
                                f"jobs_queued_server = {lim.jobs_queued_server}; try again later")
            sha = None
            if upload is not None:
                sha, path = self._store_upload(db, user.id, *upload, lim)
                src.update(kind="upload", path=str(path), name=os.path.basename(str(upload[0])))
            tok = self.store.owner_token(db, user.id)
            out_dir = self.store.root / tok / job_id
            job = Job(job_id, user.id, kind, model_key, src, dict(config), str(out_dir), label=label, upload=sha)
            db.execute("INSERT INTO jobs (id, owner, kind, model_key, source, config, out_dir, label, state, created, "
                       "upload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                       (job.id, job.owner, kind, model_key, json.dumps(src), json.dumps(job.config, default=str),
                        job.out_dir, label, job.created, sha))
        core.private_dir(self.store.root / tok)
        self._wake.set()
        return job

    def get(self, user, job_id: str) -> Optional[Job]:
        """The job if ``user`` owns it or is an admin; None otherwise (as for an unknown id)."""
        j = self.store.get(str(job_id))
        if j is None or not (j.owner == user.id or user.is_admin):
            return None
        return j

    def list(self, user, kind: Optional[str] = None) -> list[Job]:
        """``user``'s own jobs, newest first."""
        if kind is None:
            return self.store.rows("owner = ?", (user.id,))
        return self.store.rows("owner = ? AND kind = ?", (user.id, kind))

    def list_all(self, user, kind: Optional[str] = None) -> list[Job]:
        """Every user's jobs (admins only)."""
        if not user.is_admin:
            raise ClrpError("only an admin can list every user's jobs")
        return self.store.rows("1") if kind is None else self.store.rows("kind = ?", (kind,))

    def cancel(self, user, job_id: str) -> bool:
        """Cancel a queued job now, a running one at its worker's next tick (finished batches stay).
        False when ``user`` may not see the job or it has ended."""
        j = self.get(user, job_id)
        if j is None or not j.active:
            return False
        with self.store._tx() as db:
            db.execute("UPDATE jobs SET cancel = 1 WHERE id = ?", (j.id,))
            n = db.execute("UPDATE jobs SET state = 'cancelled', finished = ?, message = ? WHERE id = ? AND "
                           "state = 'queued'", (time.time(), "cancelled before it started", j.id)).rowcount
            if n:
                _release_upload(db, j)
        self._wake.set()
        return True

    def wait(self, user, job_id: str, timeout: float) -> Optional[Job]:
        """The job once it has ended (polling its state), or as it is after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            j = self.get(user, job_id)
            if j is None or not j.active or time.monotonic() > deadline:
                return j
            self._wake.set()
            time.sleep(0.1)

    # -- uploads -------------------------------------------------------------------------------
    def _store_upload(self, db, owner: str, name: str, data: bytes, lim: LimitSettings) -> tuple[str, Path]:
        suffix = core.upload_suffix(name)
        if not data:
            raise DatasetError(f"{os.path.basename(str(name))} is empty")
        sha = hashlib.sha256(data).hexdigest()
        row = _one(db, "SELECT path FROM uploads WHERE owner = ? AND sha = ?", (owner, sha))
        if row and os.path.isfile(row[0]):
            db.execute("UPDATE uploads SET used = ? WHERE owner = ? AND sha = ?", (time.time(), owner, sha))
            return sha, Path(row[0])
        self._prune(db, owner=owner)
        used = _one(db, "SELECT coalesce(sum(size), 0) FROM uploads WHERE owner = ?", (owner,))[0]
        if used + len(data) > lim.upload_bytes_per_user:
            raise ClrpError(f"upload refused: your stored archives ({_mb(used)}, held by your queued or running jobs) "
                            f"plus this one ({_mb(len(data))}) exceed upload_bytes_per_user = "
                            f"{lim.upload_bytes_per_user} ({_mb(lim.upload_bytes_per_user)})")
        folder = core.private_dir(self.store.root / "uploads" / self.store.owner_token(db, owner))
        path = folder / (sha[:32] + suffix)
        tmp = folder / f".{sha[:32]}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        db.execute("INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?)", (owner, sha, str(path), len(data), time.time()))
        return sha, path

    def _prune(self, db, owner: Optional[str] = None, max_age_s: float = UPLOAD_MAX_AGE_S,
               now: Optional[float] = None) -> int:
        """Delete uploads no queued or running job references: all of ``owner``'s (making room
        for a new one), and everyone's older than ``max_age_s``. Returns how many."""
        now = time.time() if now is None else now
        rows = db.execute("SELECT owner, sha, used FROM uploads u WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE "
                          "j.owner = u.owner AND j.upload = u.sha AND j.state IN ('queued', 'running'))").fetchall()
        n = 0
        for o, sha, used in rows:
            if o == owner or now - used > max_age_s:
                _drop_upload(db, o, sha)
                n += 1
        return n

    def prune_uploads(self, max_age_s: float = UPLOAD_MAX_AGE_S, now: Optional[float] = None) -> int:
        with self.store._tx() as db:
            return self._prune(db, max_age_s=max_age_s, now=now)

    def upload_bytes(self, owner: str) -> int:
        return self.store.one("SELECT coalesce(sum(size), 0) FROM uploads WHERE owner = ?", (owner,))[0]

    # -- the scheduler -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="clrp-jobs", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop scheduling (workers keep running: they record their own end; tests, shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.schedule()
            except Exception:  # never let the scheduler die; the next round retries
                traceback.print_exc()
            busy = bool(self._procs) or bool(self.store.rows("state IN ('queued', 'running')"))
            self._wake.wait(self.poll_s if busy else max(self.poll_s, 2.0))
            self._wake.clear()

    def schedule(self) -> None:
        """One round: reap ended workers, resume jobs whose worker is gone, start queued jobs
        while slots are free (per server, per user; estimates in a pool of their own)."""
        for jid, p in list(self._procs.items()):
            if p.poll() is not None:
                del self._procs[jid]
        for j in self.store.rows("state = 'running'"):
            self._recover(j)
        lim = self.limits
        running = self.store.rows("state = 'running'")
        for j in reversed(self.store.rows("state = 'queued'")):  # oldest first
            pool = [r for r in running if (r.kind == ESTIMATE) == (j.kind == ESTIMATE)]
            cap = lim.estimates_running_server if j.kind == ESTIMATE else lim.jobs_running_server
            if len(pool) >= cap:
                continue
            if j.kind != ESTIMATE and sum(r.owner == j.owner for r in pool) >= lim.jobs_running_per_user:
                continue
            if self._launch(j, claim="queued"):
                running.append(j)

    def _recover(self, j: Job) -> None:
        """``j`` is recorded as running: if its lock is free its worker is gone. Resume it (a fresh
        worker on the same run folder), or end it (cancel asked, an estimate, too many attempts)."""
        fd = _try_lock(self.store.lock_path(j.id))
        if fd is None:
            return  # its worker holds the lock: alive
        try:
            ended = None
            if j.cancel_requested:
                ended = ("cancelled", f"cancelled after {j.done} images (results so far are kept)")
            elif j.kind == ESTIMATE:
                ended = ("interrupted", "the server stopped during the estimate; start it again")
            elif j.attempts >= MAX_ATTEMPTS:
                ended = ("interrupted", f"the worker stopped {j.attempts} times; the {j.done} images done are kept "
                                        "(run it again to continue)")
            if ended:
                with self.store._tx() as db:
                    if db.execute("UPDATE jobs SET state = ?, message = ?, finished = ? WHERE id = ? AND state = "
                                  "'running'", (*ended, time.time(), j.id)).rowcount:
                        _release_upload(db, j)
                return
            self._launch(j, claim="running", fd=fd)
            fd = None  # handed to the worker
        finally:
            if fd is not None:
                os.close(fd)

    def _launch(self, j: Job, claim: str, fd: Optional[int] = None) -> bool:
        """Start a worker for ``j`` if its lock is free and its state is still ``claim``."""
        if fd is None:
            fd = _try_lock(self.store.lock_path(j.id))
            if fd is None:
                return False
        try:
            with self.store._tx() as db:
                ok = db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, started = coalesce("
                                "started, ?) WHERE id = ? AND state = ?", (time.time(), j.id, claim)).rowcount
            if not ok:
                return False
            lim = self.limits
            env = dict(os.environ, OMP_NUM_THREADS=str(lim.threads()), MKL_NUM_THREADS=str(lim.threads()),
                       PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
            p = subprocess.Popen([sys.executable, "-m", "dashboard.jobs", "run", str(self.store.root), j.id],
                                 cwd=str(_ROOT), env=env, pass_fds=(fd,), start_new_session=True,
                                 stdin=subprocess.DEVNULL)
            self._procs[j.id] = p
            self.store.update(j.id, pid=p.pid)
            return True
        finally:
            os.close(fd)  # the worker holds its inherited copy (and with it the lock)


def _release_upload(db, job: Job) -> None:
    """Delete ``job``'s archive unless another queued or running job of its owner reads it (in the
    caller's transaction: a submit of the same archive cannot interleave)."""
    if not job.upload:
        return
    n = _one(db, "SELECT count(*) FROM jobs WHERE owner = ? AND upload = ? AND id != ? AND state IN "
                   "('queued', 'running')", (job.owner, job.upload, job.id))[0]
    if n == 0:
        _drop_upload(db, job.owner, job.upload)


def _drop_upload(db, owner: str, sha: str) -> None:
    row = _one(db, "SELECT path FROM uploads WHERE owner = ? AND sha = ?", (owner, sha))
    if row:
        with contextlib.suppress(OSError):
            os.remove(row[0])
        db.execute("DELETE FROM uploads WHERE owner = ? AND sha = ?", (owner, sha))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------------------------
# One service per runs root in the web server

_SERVICES: dict = {}
_SERVICES_LOCK = threading.Lock()


def service() -> JobService:
    """The job service of this server's runs root (``$CLRP_RUNS_DIR``), its scheduler started."""
    root = str(core.runs_dir())
    with _SERVICES_LOCK:
        s = _SERVICES.get(root)
        if s is None:
            for old in _SERVICES.values():  # the runs root changed (tests): one scheduler per process
                old.stop()
            _SERVICES.clear()
            s = _SERVICES[root] = JobService(root)
        return s


# ---------------------------------------------------------------------------------------------
# The worker

def _lower_priority(lim: LimitSettings) -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.nice(lim.worker_nice)
    import torch

    torch.set_num_threads(lim.threads())


#: the job's config key listing the plug-in protocol classes it uses (``module:qualname``)
PLUGINS_KEY = "protocol_modules"
#: the job's config key listing the plug-in methods' records it uses (``module:variable``)
METHOD_PLUGINS_KEY = "method_records"


def run_job(root: str, job_id: str) -> int:
    """Run one job of the store in this process (the worker); records its end itself."""
    store = JobStore(root)
    job = store.get(job_id)
    if job is None:
        return 2
    _lower_priority(server_settings().limits)
    rep = Reporter(job, store.progress, lambda: store.cancel_requested(job_id))
    ds = None
    end: dict = {}
    try:
        if store.cancel_requested(job_id):
            raise Cancelled()
        lm = core.load_model(job.model_key)
        ds = core.open_source(job.source)
        try:
            job.total = len(ds)
        except Exception:
            job.total = None
        if job.config.get("limit") and job.total:
            job.total = min(job.total, int(job.config["limit"]))
        if job.total == 0:
            raise DatasetError("the dataset holds no images")
        store.update(job_id, total=job.total)
        from clrp.evaluation.runner import RunConfig, estimate_duration, run_evaluation

        import importlib

        settings = dict(job.config)
        from clrp.evaluation.protocol import REGISTRY, register_protocol

        for ref in settings.pop(PLUGINS_KEY, ()):  # the protocol class as the submitting server had it
            module, _, qualname = ref.partition(":")
            cls = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
            if cls.name not in REGISTRY:
                register_protocol(cls)
        from clrp.method_registry import register_reference

        for ref in settings.pop(METHOD_PLUGINS_KEY, ()):  # plug-in methods, as the submitting server had them
            register_reference(ref)
        cfg = RunConfig.build(**settings)
        if job.kind == ESTIMATE:
            est = estimate_duration(ds, lm, cfg)
            end = {"state": "done", "message": est.describe()}
        else:
            from clrp.evaluation.distributed import lab_executor
            from clrp.evaluation.progress import listening

            job.work_started = time.time()
            store.update(job_id, work_started=job.work_started)
            core.private_dir(job.out_dir)
            with listening(rep.tick):
                res = run_evaluation(ds, lm, job.out_dir, cfg, resume=True, progress=rep.batch_done,
                                     executor=lab_executor())
            job.done = res.images_done
            job.problems = [f"{p.file}: {p.reason}" for p in res.problems][:200]
            if res.images_done == 0:
                end = {"state": "failed",
                       "message": "no image could be evaluated: none has an object of a class the model knows"
                       + (f" ({len(res.problems)} files skipped as broken)" if res.problems else "")}
            else:
                msg = f"{res.images_done} images evaluated"
                if res.images_skipped:
                    msg += f", {res.images_skipped} skipped (no class of the model)"
                end = {"state": "done", "message": msg}
    except Cancelled:
        end = {"state": "cancelled", "message": f"cancelled after {job.done} images (results so far are kept)"}
    except ClrpError as e:
        end = {"state": "failed", "message": str(e)}
    except Exception as e:  # unexpected: generic message, details for the expander
        end = {"state": "failed", "message": "the evaluation stopped with an unexpected error",
               "detail": f"{type(e).__name__}: {e}\n\n" + traceback.format_exc(limit=8)}
    finally:
        if ds is not None and ds.problems and not job.problems:
            job.problems = [f"{p.file}: {p.reason}" for p in ds.problems][:200]
        if ds is not None:
            with contextlib.suppress(Exception):
                ds.close()
        now = time.time()
        with store._tx() as db:
            db.execute("UPDATE jobs SET state = ?, message = ?, detail = ?, finished = ?, done = ?, total = ?, "
                       "units = ?, units_at_batch = ?, problems = ? WHERE id = ?",
                       (end.get("state", "failed"), end.get("message", "the worker stopped"), end.get("detail", ""),
                        now, job.done, job.total, json.dumps(job.units), job.units_at_batch,
                        json.dumps(job.problems), job_id))
            job.state = end.get("state", "failed")
            _release_upload(db, job)  # the results stay; the archive goes
        if job.kind != ESTIMATE and os.path.isdir(job.out_dir):
            with contextlib.suppress(OSError):
                with open(os.path.join(job.out_dir, "dashboard_run.json"), "w", encoding="utf-8") as f:
                    json.dump({**job.settings(), "state": job.state, "message": end.get("message")}, f, indent=2,
                              default=str)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 3 and argv[0] == "run":
        return run_job(argv[1], argv[2])
    print("usage: python -m dashboard.jobs run STORE_DIR JOB_ID", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
