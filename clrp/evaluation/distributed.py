"""Scale-out on Ray: the same run, its batches evaluated by Ray actors.

``run_evaluation(..., executor=RayExecutor(address))`` (or ``python -m clrp evaluate ... --ray
[ADDRESS]``): the driver reads the dataset, decodes and checks the images exactly as a local run
does, and sends each batch (the images, their annotations with masks loaded) to an actor that
holds the model (loaded once per worker, on a GPU when the cluster has them). Results come back
as batches finish, in any order, and the driver writes parts and progress exactly as the local
runner does: the progress bar, the dashboard's live charts, cancel and resume behave the same,
and a run can be resumed locally or on Ray interchangeably. Workers need no shared filesystem.

A worker that dies is restarted by Ray and its batch retried (``max_restarts`` /
``max_task_retries``): the driver records a batch once, when its result arrives, so nothing is
lost or counted twice. If the driver dies, the folder holds every finished batch; resume it.

Ray is an optional dependency (``pip install "ray[default]"``); nothing else imports this module.
"""
from __future__ import annotations

import copy
import os
import sys

from ..errors import ClrpError

__all__ = ["LocalExecutor", "RayExecutor", "portable", "lab_executor"]


class LocalExecutor:
    """Batches processed one after the other, in this process."""

    name = "local"

    def run(self, chunks, work):
        for chunk in chunks:
            yield work.process(chunk)

    def describe(self) -> dict:
        return {"executor": "local"}


def portable(items) -> list:
    """(sample, image) items that can travel to another machine: masks loaded, no file loaders."""
    out = []
    for s, img in items:
        s2 = copy.copy(s)
        s2.loader = None
        s2.objects = [o.portable() for o in s.objects]
        out.append((s2, img))
    return out


class RayExecutor:
    """Batches processed by a pool of Ray actors.

    ``address``: a running cluster (``"auto"``, ``"ray://head:10001"``, ``"127.0.0.1:6379"``), or
    None for a local Ray instance started for this run. ``workers``: actors (default: one per
    CPU of the cluster, or one per GPU when it has GPUs). ``in_flight``: batches queued per actor.
    """

    name = "ray"

    def __init__(self, address=None, workers=None, in_flight: int = 2, max_retries: int = 3,
                 init_kwargs: dict | None = None):
        self.address = address
        self.workers = workers
        self.in_flight = max(1, int(in_flight))
        self.max_retries = max_retries
        self.init_kwargs = dict(init_kwargs or {})
        self.actors = []

    def describe(self) -> dict:
        return {"executor": "ray", "ray_address": self.address, "ray_workers": len(self.actors) or self.workers}

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise ClrpError("evaluating on Ray needs the ray package: pip install 'ray[default]'") from None
        if not ray.is_initialized():
            kw = dict(logging_level="ERROR", include_dashboard=False, **self.init_kwargs)
            if self.address in (None, "", "local"):
                kw.setdefault("address", "local")
                kw.setdefault("_node_ip_address", "127.0.0.1")
            else:
                kw["address"] = self.address
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            runtime = dict(kw.pop("runtime_env", {}) or {})
            # workers may lack clrp (a checkout on the driver only): ship the package with the job
            runtime.setdefault("py_modules", [os.path.join(root, "clrp")])
            try:
                ray.init(runtime_env=runtime, **kw)
            except Exception as exc:  # connection refused, bad address, ...
                raise ClrpError(f"cannot start or reach Ray at {self.address or 'a local instance'}: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
            if kw["address"] == "local":
                guard_local_ray()
        return ray

    def run(self, chunks, work):
        ray = self._ray()
        from ray import cloudpickle

        for p in work.protocols.values():  # plug-ins defined outside clrp travel by value
            mod = type(p).__module__
            if not mod.startswith("clrp.") and mod in sys.modules:
                cloudpickle.register_pickle_by_value(sys.modules[mod])
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        n = self.workers or (gpus if gpus else max(1, int(resources.get("CPU", 1))))
        actor_cls = ray.remote(num_cpus=0 if gpus else 1, num_gpus=1 if gpus else 0, max_restarts=self.max_retries,
                               max_task_retries=self.max_retries)(_Worker)
        state = ray.put(work)
        self.actors = [actor_cls.remote(state, "cuda" if gpus else None) for _ in range(n)]
        pending = {}  # object ref -> actor index
        queues = [0] * n
        source = iter(chunks)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < n * self.in_flight:
                    chunk = next(source, None)
                    if chunk is None:
                        exhausted = True
                        break
                    i = min(range(n), key=queues.__getitem__)
                    ref = self.actors[i].process.remote(portable(chunk))
                    pending[ref] = i
                    queues[i] += 1
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                queues[pending.pop(ref)] -= 1
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise ClrpError(f"a Ray worker failed and could not be retried: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
                yield result
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            for a in self.actors:
                try:
                    ray.kill(a)
                except Exception:
                    pass

    def pids(self) -> list:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])


# Ray ends the GCS and the raylet of a local instance with its driver (they get PDEATHSIG), but the
# agents the raylet starts (dashboard and runtime-env agents) survive a driver killed by SIGKILL,
# re-parented to PID 1, and ignore SIGTERM. Nothing in a killed driver runs, so a small process
# outside it watches the driver and kills what is left of the instance when it is gone.
_GUARD = r"""
import sys, time
import psutil

def ray_process(p):
    try:
        name, cmd = p.name(), " ".join(p.cmdline())
    except psutil.Error:
        return False
    return name in ("gcs_server", "raylet") or name.startswith("ray::") or "/ray/" in cmd

driver, me = psutil.Process(int(sys.argv[1])), psutil.Process()
seen, started = {}, False
while True:
    try:
        if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
            break
        kids = [p for p in driver.children(recursive=True) if p.pid != me.pid and ray_process(p)]
    except psutil.Error:
        break
    seen.update({p.pid: p for p in kids})
    seen = {pid: p for pid, p in seen.items() if p.is_running()}
    if started and not seen:
        sys.exit(0)  # the instance was shut down and the driver lives on
    started = started or bool(seen)
    time.sleep(0.5)
for p in seen.values():
    try:
        p.kill()  # psutil checks the creation time: a reused pid is not touched
    except psutil.Error:
        pass
"""


def guard_local_ray() -> None:
    """Start the watcher (above) of the local Ray instance this process just started: when this
    process dies, even by SIGKILL, no process of the instance outlives it."""
    import subprocess

    env = dict(os.environ)
    try:
        import psutil  # noqa: F401
    except ImportError:  # plain `pip install ray` has no psutil of its own, but ray ships a copy
        import ray

        vendored = os.path.join(os.path.dirname(ray.__file__), "thirdparty_files")
        if not os.path.isdir(os.path.join(vendored, "psutil")):  # pragma: no cover
            return
        env["PYTHONPATH"] = os.pathsep.join(p for p in (vendored, env.get("PYTHONPATH")) if p)
    subprocess.Popen([sys.executable, "-c", _GUARD, str(os.getpid())], stdin=subprocess.DEVNULL, env=env,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


class _Worker:
    """A Ray actor: the model, loaded once, evaluating batches sent by the driver."""

    def __init__(self, work, device=None):
        import torch

        torch.set_num_threads(1)
        if device is not None:
            work = work.to(device)
        self.work = work

    def pid(self) -> int:
        return os.getpid()

    def process(self, items):
        return self.work.process(items)


def lab_executor(config=None):
    """The executor a lab's TOML (``config`` or ``$CLRP_MODELS_CONFIG``) asks for: its ``[ray]``
    table (``address``, ``workers``) gives a :class:`RayExecutor`, no table the local one::

        [ray]
        address = "auto"      # or "ray://head:10001", "10.0.0.5:6379", "local"
        workers = 8           # optional
    """
    from ..models import CONFIG_ENV

    path = config if config is not None else os.environ.get(CONFIG_ENV)
    if not path or not os.path.isfile(path):
        return LocalExecutor()
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        return LocalExecutor()
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f).get("ray")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ClrpError(f"cannot read the lab config {path}: {exc}") from None
    if table is None:
        return LocalExecutor()
    if not isinstance(table, dict) or set(table) - {"address", "workers"}:
        raise ClrpError(f"lab config {path}: [ray] takes address and workers")
    return RayExecutor(table.get("address"), workers=table.get("workers"))
