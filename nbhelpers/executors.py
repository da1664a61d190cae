"""Where a long study runs: here (``executor="local"``, the default) or on a Ray cluster (``executor="ray"``).

A study (a bias audit, a localisation study, caption scoring over a data set) cuts its work into *shards*
(a batch of generations, a few images) and hands them to an executor with a *shard function*
``fn(model, shard) -> result``, a module-level function of the study's own module. The executor yields
``(shard index, result)`` as shards finish; the study (the *driver*) writes the results into its resumable
table (:class:`nbhelpers.tables.ResumableTable`), which keeps each row once whatever the order of completion,
and feeds its ``tqdm`` bar with each finished shard.

- :class:`LocalExecutor` runs the shards in order, in this process, on the model given. Ray is not imported.
- :class:`RayExecutor` uses Ray (an optional extra: ``pip install 'nbhelpers[ray]'``): it connects to a
  running cluster (``ray.init(address=...)``; ``address=None`` reads ``RAY_ADDRESS`` or finds the local
  one) or, with ``start_local=True``, starts one on this machine. It starts one actor per worker (per GPU on a
  cluster with GPUs, else per ``cpus_per_worker`` CPU cores); each actor loads the model once, by its name,
  with :func:`nbhelpers.load_model` (so the workers need the package, and the model's folder or its Hugging Face
  copy, on their own machines) and then runs shards from a :class:`ray.util.ActorPool`. A worker that dies is
  restarted by Ray and its shard run again (``max_restarts`` / ``max_task_retries``); a shard that finishes
  twice is written once, because the table keeps one row per key.

Only Ray's own serialisation carries shards and results between its processes; nothing is pickled to disk.
Results are the same as the local executor's for the same seeds when the shards are the same, which every study
here ensures (a shard is the unit the local path computes in one go): bit for bit on CPU when the dtype and the
number of torch threads are the same (PyTorch's CPU kernels split their sums by thread; a worker uses
``int(cpus_per_worker)`` threads, so compare with ``torch.set_num_threads`` set alike on the driver).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from .errors import NbhelpersError
from .validate import ArgumentError

RAY_EXTRA = "pip install 'nbhelpers[ray]'"


class ExecutorError(NbhelpersError, RuntimeError):
    """An executor that cannot run: Ray missing, no cluster to connect to, a model workers cannot load."""


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load its own copy of the model: the name or folder given to
    :func:`nbhelpers.load_model`, and the dtype (``"float32"``, ...; None: the device's default)."""

    name: str
    dtype: str | None = None

    def load(self, device: str = "auto"):
        from .model import load_model

        return load_model(self.name, device=device, dtype=self.dtype)


def model_spec(model, dtype: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of a model loaded with :func:`nbhelpers.load_model` (its name and dtype), or of a
    model name. ``dtype`` overrides the model's."""
    from .model import DiffusionModel

    if isinstance(model, (str, os.PathLike)):
        return ModelSpec(os.fspath(model), dtype)
    if isinstance(model, DiffusionModel) and model.name:
        return ModelSpec(model.name, dtype or str(model.dtype).removeprefix("torch."))
    raise ExecutorError(f"{type(model).__name__} {getattr(model, 'name', '')!r} cannot be sent to Ray workers: each "
                        "worker loads its own copy with nbhelpers.load_model(name), so give a model loaded by "
                        "load_model (or its name), or run with executor='local'")


# -- local ------------------------------------------------------------------------------------------------
class LocalExecutor:
    """Shards in order, in this process, on the model given."""

    name = "local"

    def map(self, model, fn: Callable[[Any, Any], Any], shards: Sequence) -> Iterator[tuple[int, Any]]:
        """Yield ``(i, fn(model, shards[i]))`` for each shard in order."""
        for i, shard in enumerate(shards):
            yield i, fn(model, shard)

    def __repr__(self) -> str:
        return "LocalExecutor()"


# -- Ray --------------------------------------------------------------------------------------------------
class _ShardWorker:
    """A Ray actor's class: loads the model once, then runs shard functions on it."""

    def __init__(self, spec: ModelSpec, device: str, threads: int):
        import torch

        torch.set_num_threads(threads)  # CPU kernels' sums depend on the thread count: fix it
        self.model = spec.load(device)

    def run(self, fn, item):
        i, shard = item
        return i, fn(self.model, shard)


class RayExecutor:
    """Run shards on a Ray cluster, one actor (one model copy) per worker.

    - ``address``: the cluster to join (``"auto"``, ``"ray://head:10001"``, ...); None reads ``RAY_ADDRESS``,
      else ``"auto"`` (the cluster ``ray start --head`` started on this machine). If Ray is already initialised
      in this process, that connection is used as it is.
    - ``start_local``: start a Ray instance on this machine instead (``local_cpus`` cores; default
      ``workers × cpus_per_worker``), kept for later calls in this process; :meth:`shutdown` stops it.
    - ``workers``: actors to start; default one per GPU of the cluster, or, without GPUs, one per
      ``cpus_per_worker`` cores.
    - ``gpus_per_worker``: default 1 on a cluster with GPUs, else 0; the workers then load the model on
      ``"cuda"`` (or ``"cpu"``).
    - ``dtype``: the workers' dtype; default the driver's model's (so results match the local executor's).
    - ``max_retries``: how often Ray restarts a dead worker and reruns its shard before the study fails.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float | None = None, start_local: bool = False, local_cpus: int | None = None,
                 dtype: str | None = None, max_retries: int = 3, runtime_env: dict | None = None):
        from .validate import whole_number

        if workers is not None:
            whole_number("workers", workers, 1, None, "Ray actors, one model copy each")
        whole_number("max_retries", max_retries, 0, None, "restarts of a dead worker")
        if not cpus_per_worker > 0:
            raise ArgumentError(f"cpus_per_worker={cpus_per_worker!r} must be positive (CPU cores per actor)")
        self.address, self.workers, self.cpus_per_worker = address, workers, cpus_per_worker
        self.gpus_per_worker, self.start_local, self.local_cpus = gpus_per_worker, start_local, local_cpus
        self.dtype, self.max_retries, self.runtime_env = dtype, max_retries, runtime_env
        self._started = False
        self._actors: dict[ModelSpec, list] = {}

    def __repr__(self) -> str:
        where = "local instance" if self.start_local else (self.address or os.environ.get("RAY_ADDRESS") or "auto")
        return f"RayExecutor({where}, workers={self.workers})"

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise ExecutorError(f"executor='ray' needs Ray, which is not installed; {RAY_EXTRA}") from None
        return ray

    def connect(self):
        """Initialise Ray in this process (if it is not) and return the module."""
        ray = self._ray()
        if ray.is_initialized():
            return ray
        if self.start_local:
            cpus = self.local_cpus or int((self.workers or 2) * self.cpus_per_worker)
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, runtime_env=self.runtime_env,
                     log_to_driver=False)  # "local": a new instance, never one found in /tmp/ray
            self._started = True
            return ray
        address = self.address or os.environ.get("RAY_ADDRESS") or "auto"
        try:
            ray.init(address=address, runtime_env=self.runtime_env, log_to_driver=False)
        except ConnectionError as e:
            raise ExecutorError(f"no Ray cluster at address={address!r} ({e}). Start one (`ray start --head` on this "
                                "machine, or see the README's 'Running at scale'), give its address "
                                "(RayExecutor(address='ray://HEAD:10001')), or start a private one with "
                                "RayExecutor(start_local=True, workers=2)") from None
        return ray

    def shutdown(self) -> None:
        """Stop the Ray instance this executor started (a cluster it joined is left running)."""
        self.release()
        if self._started:
            self._ray().shutdown()
            self._started = False

    def _plan(self, ray) -> tuple[int, float]:
        resources = ray.cluster_resources()
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        if self.workers:
            return self.workers, gpus
        if gpus:
            return max(1, int(resources.get("GPU", 0) // gpus)), gpus
        return max(1, int(resources.get("CPU", 1) // self.cpus_per_worker)), gpus

    def actors(self, model) -> list:
        """The actors holding ``model`` (started, each loading it, on first use; kept for later studies with
        the same model, so each worker loads it once)."""
        spec = model_spec(model, self.dtype)
        if spec not in self._actors:
            ray = self.connect()
            n, gpus = self._plan(ray)
            worker = ray.remote(_ShardWorker).options(num_cpus=self.cpus_per_worker, num_gpus=gpus,
                                                      max_restarts=self.max_retries,
                                                      max_task_retries=self.max_retries)
            threads = max(1, int(self.cpus_per_worker))
            self._actors[spec] = [worker.remote(spec, "cuda" if gpus else "cpu", threads) for _ in range(n)]
        return self._actors[spec]

    def release(self) -> None:
        """Remove every actor this executor started (their model copies with them)."""
        if self._actors:
            ray = self._ray()
            for actors in self._actors.values():
                for a in actors:
                    ray.kill(a)
            self._actors.clear()

    def map(self, model, fn: Callable[[Any, Any], Any], shards: Sequence) -> Iterator[tuple[int, Any]]:
        """Yield ``(i, fn(worker's model, shards[i]))`` as shards finish, in any order. If the iteration fails
        or is abandoned (a study interrupted with Ctrl-C), the actors are removed with the shards in flight."""
        if not len(shards):
            return
        actors = self.actors(model)
        ray = self._ray()
        from ray.util import ActorPool

        finished = False
        try:
            pool = ActorPool(actors)
            for i, result in pool.map_unordered(lambda a, item: a.run.remote(fn, item), list(enumerate(shards))):
                yield i, result
            finished = True
        except ray.exceptions.RayActorError as e:
            raise ExecutorError(f"a Ray worker died more than max_retries={self.max_retries} times ({e}); the rows "
                                "finished so far are saved, run the same call again to resume") from e
        finally:
            if not finished:
                self.release()


_DEFAULT_RAY: RayExecutor | None = None


def resolve_executor(executor) -> LocalExecutor | RayExecutor:
    """``"local"`` (or None), ``"ray"`` (:class:`RayExecutor` with its defaults: the running cluster) or an
    executor object. ``"ray"`` is one executor for the whole session, so its actors (a model copy each) are
    reused by every study on the same model; ``resolve_executor("ray").release()`` frees them."""
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "ray":
        global _DEFAULT_RAY
        _DEFAULT_RAY = _DEFAULT_RAY or RayExecutor()  # one set of actors per model for the session
        return _DEFAULT_RAY
    if isinstance(executor, (LocalExecutor, RayExecutor)):
        return executor
    raise ArgumentError(f"executor={executor!r} is not an executor; use 'local' (this process), 'ray' (the running "
                        "Ray cluster) or nbhelpers.executors.RayExecutor(address=..., workers=...)")


def shards_of(items: Sequence, size: int) -> list:
    """``items`` cut into consecutive lists of ``size`` (the last may be shorter)."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def run_image_shards(model, shard_fn: Callable, work: dict, params: dict, executor, out=None, spec: dict | None = None,
                     key: tuple[str, ...] = ("image",), per_shard: int = 1, desc: str = "images") -> dict[int, list]:
    """The driver of a per-image study (localisation, caption scoring): ``work`` {image index k: (its inputs...)}
    cut into shards of ``per_shard`` images, ``shard_fn(model, dict(params, items=[(k, *work[k]), ...]))`` returning
    ``[(k, rows), ...]`` run on ``executor``. With ``out``, each image's rows go to ``out``'s ``records.jsonl``
    (a :class:`~nbhelpers.tables.ResumableTable` keyed by ``key``, in a folder holding ``spec``) as they
    finish, and images already there are not computed again. Returns {k: rows} for every image of ``work``."""
    from tqdm.auto import tqdm

    from .tables import ResumableTable, study_folder

    table, done = None, {}
    if out is not None:
        table = ResumableTable(study_folder(out, spec or {}) / "records.jsonl", key)
        for r in table.rows():
            done.setdefault(int(r["image"]), []).append(r)
    todo = [k for k in work if k not in done]
    shards = [dict(params, items=[(k, *work[k]) for k in chunk]) for chunk in shards_of(todo, per_shard)]
    bar = tqdm(total=len(work), initial=len(work) - len(todo), desc=desc, leave=False)
    for _, results in resolve_executor(executor).map(model, shard_fn, shards):
        for k, rows in results:
            if table is not None:
                table.append(rows)  # one row per key, whatever the order or a repeated shard
            done.setdefault(k, rows)
        bar.update(len(results))
    bar.close()
    return done


def _call_shard(model, shard: dict):
    return shard["function"](model, **shard["kwargs"])


def map_calls(model, function: Callable, calls: Sequence[dict], executor="local", desc: str = "calls") -> list:
    """``[function(model, **kwargs) for kwargs in calls]`` on any executor, in the order of ``calls``: the way to
    fan out a method with no study of its own over many inputs (Conceptor over many concepts, an emergence view
    over many prompts, an estimate over many images). ``function`` must be importable where the workers run (a
    function of this package, e.g. :func:`nbhelpers.info.mutual_information`); each call is one shard, and its
    result travels back through Ray. Nothing is written to disk here: with the result cache on
    (``NBHELPERS_CACHE``), a worker sharing this machine's disk finds the calls it already made."""
    from tqdm.auto import tqdm

    executor = resolve_executor(executor)
    calls = list(calls)
    for i, kw in enumerate(calls):
        if not isinstance(kw, dict):
            raise ArgumentError(f"calls[{i}]={kw!r}: give one dict of keyword arguments per call, e.g. "
                                "[{'prompt': 'a red circle'}, {'prompt': 'a blue square'}]")
    results: list = [None] * len(calls)
    with tqdm(total=len(calls), desc=desc, mininterval=2) as bar:
        for i, r in executor.map(model, _call_shard, [dict(function=function, kwargs=kw) for kw in calls]):
            results[i] = r
            bar.update(1)
    return results
