"""A job of many models: one after another in this process, or in parallel on a Ray cluster.

Each model is ingested as it would be alone (``ingest.job``) and published as soon as it is
finished, through the one publish path (``atlas.core.publish``), so nothing half-written is
ever visible. A model already in the atlas is skipped unless ``replace`` (so running a job
again finishes what failed), a model that fails is reported with its error while the others
go on, and one progress line after each model says how many are done, running and failed, and
the time left.

On Ray, this process (the driver) plans every model first: a task boots it and counts the ids
it needs (``ingest.job.plan``). The driver reserves those ids in the job's order, so that a
model gets the ids a serial run would give it, then runs one task per model, reserving
``gpus_per_task`` GPUs. Workers write finished stores into the job's folder under the atlas's
``.staging`` (so the atlas must be on storage that every node sees, with POSIX locks); only the
driver publishes them. A worker that dies (its process killed, its node lost) is retried up to
``retries`` times, each time into a fresh folder; a model whose ingest raises an error fails
at once. Ray is imported only here, and only when asked for (the ``svd-atlas[ray]`` extra).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from atlas.core.errors import AtlasError, one_line
from atlas.core.layout import AtlasDir
from atlas.core.model_lock import ModelBusy, model_lock
from atlas.core.publish import IdRange, publish, reserve_ids
from atlas.models.loading import local_path
from ingest.job import build_in, ingest, model_id_of, plan
from ingest.options import DEFAULT_RETRIES, LOCAL_RAY, IngestOptions
from ingest.report import IngestReport

Log = Callable[[str], None]


@dataclass
class Outcome:
    """What became of one model of a job: ``published``, ``skipped`` or ``failed``."""

    model_id: str
    spec: str
    status: str
    error: str | None = None
    report: IngestReport | None = None
    seconds: float = 0.0


def job_models(models: Sequence[IngestOptions]) -> list[tuple[str, IngestOptions]]:
    """Each model of a job with the model_id it is stored under; two under one id is an
    error, before anything runs."""
    named = [(model_id_of(options), options) for options in models]
    seen: dict[str, str] = {}
    for model_id, options in named:
        if model_id in seen:
            raise AtlasError(
                f"{seen[model_id]!r} and {options.model!r} would both be stored as "
                f"{model_id!r}: give one of them another `name` (in a job file: MODEL --name ID)"
            )
        seen[model_id] = options.model
    return named


def _quiet(_message: str) -> None:
    """No lines: workers' own stage logs (the driver's line per model covers the job), and
    the library's default (it prints nothing unless asked)."""


class Progress:
    """The job's one progress display: a line after each model (and before each, serially)."""

    def __init__(self, total: int, log: Log, slots: int = 1):
        self.total, self.log, self.slots = total, log, slots
        self.outcomes: list[Outcome] = []
        self.started = time.perf_counter()

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        what = {
            "published": f"published {outcome.model_id} in {outcome.seconds:.1f} s",
            "skipped": f"skipped {outcome.model_id}: already in the atlas (`replace` replaces it)",
            "failed": f"failed {outcome.model_id}: {outcome.error}",
        }[outcome.status]
        self.log(f"[job] {what}; {self.summary()}")

    def summary(self) -> str:
        count = {s: sum(o.status == s for o in self.outcomes) for s in ("published", "failed")}
        ended = len(self.outcomes)
        left = self.total - ended
        running = min(left, self.slots)
        line = (
            f"{ended}/{self.total} done ({count['published']} published, {count['failed']} "
            f"failed), {running} running, {left - running} queued"
        )
        worked = [o.seconds for o in self.outcomes if o.status == "published"]
        if left and worked:
            remaining = sum(worked) / len(worked) * left / self.slots
            line += f"; about {remaining:.0f} s remaining"
        return line


def run_job(
    root: str | Path,
    models: Sequence[IngestOptions],
    ray_address: str | None = None,
    gpus_per_task: float | None = None,
    retries: int = DEFAULT_RETRIES,
    log: Log = _quiet,
) -> list[Outcome]:
    """Ingest ``models`` into the atlas at ``root``: serially, or on Ray when ``ray_address``
    is given (``"local"``, ``"auto"`` or a cluster's address); one outcome per model, in order.

    ``gpus_per_task`` defaults to 1 on a cluster with GPUs, 0 without.
    """
    named = job_models(models)
    if ray_address is not None:
        check_ray_address(ray_address)
    atlas_dir = AtlasDir(root)
    atlas_dir.ensure_writable()
    published = atlas_dir.read_catalog().models
    outcomes: dict[int, Outcome] = {}
    todo: list[tuple[int, str, IngestOptions]] = []
    for position, (model_id, options) in enumerate(named):
        if model_id in published and not options.replace:
            outcomes[position] = Outcome(model_id, options.model, "skipped")
        else:
            todo.append((position, model_id, options))
    if ray_address is None:
        progress = Progress(len(named), log)
        for outcome in outcomes.values():
            progress.record(outcome)
        for position, model_id, options in todo:
            log(f"[job] model {position + 1}/{len(named)}: {options.model}")
            outcomes[position] = _ingest_here(atlas_dir, model_id, options, log)
            progress.record(outcomes[position])
    else:
        with contextlib.ExitStack() as locks:
            todo = _lock_models(atlas_dir, todo, outcomes, locks)
            outcomes.update(
                _RayJob(atlas_dir, ray_address, gpus_per_task, retries, log).run(todo, outcomes)
            )
    return [outcomes[i] for i in range(len(named))]


def _lock_models(
    atlas_dir: AtlasDir,
    todo: list[tuple[int, str, IngestOptions]],
    outcomes: dict[int, Outcome],
    locks: contextlib.ExitStack,
) -> list[tuple[int, str, IngestOptions]]:
    """The models of ``todo`` whose locks this driver now holds (in ``locks``); one another
    process is writing fails at once (serially, ``ingest`` takes each lock itself)."""
    locked = []
    for position, model_id, options in todo:
        try:
            locks.enter_context(model_lock(atlas_dir, model_id))
        except ModelBusy as exc:
            outcomes[position] = Outcome(model_id, options.model, "failed", one_line(exc))
            continue
        locked.append((position, model_id, options))
    return locked


def _ingest_here(atlas_dir: AtlasDir, model_id: str, options: IngestOptions, log: Log) -> Outcome:
    started = time.perf_counter()
    try:
        report = ingest(atlas_dir.root, options, log=log)
    except AtlasError as exc:
        return Outcome(model_id, options.model, "failed", one_line(exc), None, _since(started))
    except Exception as exc:  # a bug in one model's ingest does not stop the job
        reason = f"{type(exc).__name__}: {one_line(exc)}"
        return Outcome(model_id, options.model, "failed", reason, None, _since(started))
    return Outcome(model_id, options.model, "published", None, report, report.wall_seconds)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 2)


# -- on Ray ----------------------------------------------------------------------------------


def plan_task(options: IngestOptions) -> tuple[str, int, int]:
    """A Ray task: what one model needs of the atlas's ids (``ingest.job.plan``)."""
    return plan(options, log=_quiet)


def build_task(
    job_folder: str, atlas_root: str, options: IngestOptions, ids: IdRange
) -> tuple[str, IngestReport]:
    """A Ray task: one model's finished store in a fresh folder of the job's; its name and the
    ingest's report."""
    folder = Path(job_folder) / uuid.uuid4().hex
    return folder.name, build_in(folder, Path(atlas_root), options, ids, log=_quiet)


class _RayJob:
    def __init__(
        self,
        atlas_dir: AtlasDir,
        address: str,
        gpus_per_task: float | None,
        retries: int,
        log: Log,
    ):
        self.atlas_dir = atlas_dir
        self.ray = _connect(address)
        gpus = self.ray.cluster_resources().get("GPU", 0)
        self.gpus = gpus_per_task if gpus_per_task is not None else (1 if gpus else 0)
        if self.gpus > gpus:
            raise AtlasError(
                f"{self.gpus:g}, but the Ray cluster has {gpus:g} GPUs", param="gpus_per_task"
            )
        cpus = self.ray.cluster_resources().get("CPU", 1)
        self.slots = max(1, int(gpus // self.gpus) if self.gpus else int(cpus))
        self.retries, self.log = retries, log

    def run(
        self, todo: list[tuple[int, str, IngestOptions]], outcomes: dict[int, Outcome]
    ) -> dict[int, Outcome]:
        ray, log = self.ray, self.log
        total = len(todo) + len(outcomes)
        progress = Progress(total, log, self.slots)
        for outcome in outcomes.values():
            progress.record(outcome)
        started = {position: time.perf_counter() for position, _, _ in todo}
        todo = [(p, m, _portable(o, m)) for p, m, o in todo]
        log(f"[job] planning {len(todo)} models on Ray ({self.slots} at a time)")
        planner = ray.remote(num_cpus=1, max_retries=self.retries)(plan_task)
        plans = [(p, m, o, planner.remote(replace(o, device="cpu"))) for p, m, o in todo]
        planned: list[tuple[int, str, IngestOptions, tuple[int, int]]] = []
        for position, model_id, options, ref in plans:
            try:
                _, n_directions, n_matrices = ray.get(ref)
            except Exception as exc:
                outcomes[position] = self._failed(model_id, options, exc, started[position])
                progress.record(outcomes[position])
                continue
            planned.append((position, model_id, options, (n_directions, n_matrices)))
        ranges = reserve_ids(self.atlas_dir, [sizes for *_, sizes in planned])
        builder = ray.remote(num_cpus=1, num_gpus=self.gpus, max_retries=self.retries)(build_task)
        root = str(self.atlas_dir.root.resolve())  # where workers find it (shared storage)
        with self.atlas_dir.staging() as job_folder:
            folder = str(job_folder.resolve())
            running = {
                builder.remote(folder, root, options, ids): (position, model_id, options, ids)
                for (position, model_id, options, _), ids in zip(planned, ranges, strict=True)
            }
            try:
                while running:
                    (ref,), _ = ray.wait(list(running), num_returns=1)
                    position, model_id, options, ids = running.pop(ref)
                    outcomes[position] = self._publish(
                        ref, job_folder, model_id, options, ids, started[position]
                    )
                    progress.record(outcomes[position])
            finally:  # interrupted: stop the workers before their folder goes
                for ref in running:
                    ray.cancel(ref, force=True)
        return outcomes

    def _publish(
        self,
        ref: Any,
        job_folder: Path,
        model_id: str,
        options: IngestOptions,
        ids: IdRange,
        started: float,
    ) -> Outcome:
        try:
            folder, report = self.ray.get(ref)
            publish(self.atlas_dir, [(model_id, job_folder / folder, ids)], options.replace)
        except Exception as exc:
            return self._failed(model_id, options, exc, started)
        # the model's own time, as a serial job reports it (not its wait in the queue)
        return Outcome(model_id, options.model, "published", None, report, report.wall_seconds)

    def _failed(
        self, model_id: str, options: IngestOptions, exc: BaseException, started: float
    ) -> Outcome:
        return Outcome(model_id, options.model, "failed", self._reason(exc), None, _since(started))

    def _reason(self, exc: BaseException) -> str:
        """One line for why a model failed: its own error, or how its workers died."""
        cause = getattr(exc, "cause", None)
        if isinstance(exc, AtlasError) or isinstance(cause, AtlasError):
            return one_line(cause if isinstance(cause, AtlasError) else exc)
        if isinstance(exc, self.ray.exceptions.RayTaskError) and cause is not None:
            return f"{type(cause).__name__}: {one_line(cause)}"
        if isinstance(exc, self.ray.exceptions.RayError):
            return (
                f"its worker died {self.retries + 1} times ({type(exc).__name__}: "
                f"{one_line(exc, 200)})"
            )
        return f"{type(exc).__name__}: {one_line(exc)}"


def _portable(options: IngestOptions, model_id: str) -> IngestOptions:
    """``options`` as a worker on another node (or in another folder) reads them: a local
    folder as an absolute path, and the model_id fixed."""
    folder = local_path(options.model)
    model = str(folder.resolve()) if folder.exists() else options.model
    return replace(options, model=model, model_id=model_id)


def check_ray_address(address: str) -> None:
    """A model read as the `ray` address (``--ray random:gpt2-small``) is one clear error."""
    if address in (LOCAL_RAY, "auto") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if host and port.isdigit():
        return
    raise AtlasError(
        f"`ray` {address!r}: an address is auto, HOST:PORT or ray://HOST:PORT (a model right "
        "after `ray` is read as its address: put `ray` after the models, or write `ray` local)"
    )


def _connect(address: str) -> Any:
    """Ray, connected to the cluster at ``address`` (``local`` starts one on this machine)."""
    try:
        import ray
    except ImportError:
        raise AtlasError(
            "`ray` needs Ray: pip install 'svd-atlas[ray]' (or pip install ray)"
        ) from None
    if not ray.is_initialized():
        where: dict[str, Any] = (
            {"include_dashboard": False} if address == LOCAL_RAY else {"address": address}
        )
        _probe(address)
        try:
            ray.init(log_to_driver=False, logging_level=logging.ERROR, **where)
        except Exception as exc:  # Ray raises many kinds; none is the user's bug to read
            raise AtlasError(
                f"cannot start Ray for the job ({address}): {one_line(exc)}; {RAY_HINT}"
            ) from None
    return ray


RAY_HINT = (
    "check the address (a head node started with `ray start --head` listens on HOST:6379, "
    "a Ray client server on ray://HOST:10001), or use `ray` local for a cluster on this machine"
)
RAY_PROBE_SECONDS = 5.0


def _probe(address: str) -> None:
    """Refuse at once an address nothing listens on: ``ray.init`` would retry it for minutes,
    logging a line every few seconds."""
    if address in (LOCAL_RAY, "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not (host and port.isdigit()):
        return  # ray://HOST: Ray's default port
    try:
        socket.create_connection((host.strip("[]"), int(port)), RAY_PROBE_SECONDS).close()
    except OSError as exc:
        raise AtlasError(
            f"cannot connect to the Ray cluster at {address}: {one_line(exc)}; {RAY_HINT}"
        ) from None
