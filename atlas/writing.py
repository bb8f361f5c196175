"""What changes an atlas, for the façade: ingest models, load a bundle, check (and repair).

Each is a function of the atlas's location, so that a command can use it on an atlas that
cannot be opened for reading yet (an empty folder, a lost catalog that ``check(repair=True)``
rebuilds). :class:`atlas.api.Atlas` calls the same functions for ``atlas.open(path,
write=True)`` handles. torch is imported only by an ingest, when it starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from atlas.core.check import CheckReport, Finding, check_atlas
from atlas.core.errors import AtlasError
from atlas.core.exchange.bundle_format import VECTOR_MODES
from atlas.core.exchange.load import LoadResult, load_bundle
from atlas.core.exchange.tree_format import MARKER
from atlas.core.progress import Progress, no_progress
from atlas.core.repair import repair_atlas
from atlas.models.random_models import RANDOM_SHAPES
from ingest.options import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_EXACT_MAX,
    DEFAULT_GAP_TOLERANCE,
    DEFAULT_PROCESSING,
    DEFAULT_RETRIES,
    DEFAULT_TOP_K,
    DEVICES,
    DTYPES,
    LOCAL_RAY,
    PROCESSING_CHOICES,
    IngestOptions,
    read_model_list,
)

if TYPE_CHECKING:
    from ingest.report import IngestReport  # imports torch

__all__ = [
    "DEFAULT_DEVICE",
    "DEFAULT_DTYPE",
    "DEFAULT_EXACT_MAX",
    "DEFAULT_GAP_TOLERANCE",
    "DEFAULT_PROCESSING",
    "DEFAULT_RETRIES",
    "DEFAULT_TOP_K",
    "DEVICES",
    "DTYPES",
    "LOCAL_RAY",
    "PROCESSING_CHOICES",
    "RANDOM_SHAPES",
    "VECTOR_MODES",
    "CheckReport",
    "Finding",
    "IngestFailed",
    "IngestOptions",
    "IngestResult",
    "IngestedModel",
    "LoadResult",
    "check",
    "ingest",
    "load",
]

Model = str | tuple[str, str]  # MODEL, or (MODEL, model_id)
# ingest's options by the names the command line gives them (--gap-tol, --name), as keywords
_RENAMED = {"model_id": "name", "gap_tolerance": "gap_tol"}
_OPTION_FIELDS = {
    _RENAMED.get(f.name, f.name): f.name
    for f in dataclasses.fields(IngestOptions)
    if f.name != "model"
}
_JOB_OPTIONS = ("ray", "gpus_per_task", "retries")


@dataclass
class IngestedModel:
    """What became of one model: ``published``, ``skipped`` (already in the atlas) or
    ``failed`` (``error`` says why); ``report`` holds a published model's rows, times and
    memory."""

    model_id: str
    spec: str
    status: str
    error: str | None = None
    seconds: float = 0.0
    report: IngestReport | None = None

    @property
    def directions(self) -> int:
        return self.report.counts.get("directions", 0) if self.report else 0


@dataclass
class IngestResult:
    """One :class:`IngestedModel` per model asked for, in order."""

    models: list[IngestedModel] = field(default_factory=list)
    job: bool = False  # several models (or a model file, or Ray): published one by one

    @property
    def model_ids(self) -> list[str]:
        """The models published by this call."""
        return [m.model_id for m in self.models if m.status == "published"]

    @property
    def directions(self) -> int:
        """Directions published by this call, over every model."""
        return sum(m.directions for m in self.models)

    @property
    def seconds(self) -> float:
        return sum(m.seconds for m in self.models)

    @property
    def failed(self) -> list[IngestedModel]:
        return [m for m in self.models if m.status == "failed"]


class IngestFailed(AtlasError):
    """Some models of a job failed; the others are in the atlas (``result`` says which)."""

    def __init__(self, result: IngestResult):
        failed = result.failed
        super().__init__(
            f"{len(failed)} of {len(result.models)} models failed (first: "
            f"{failed[0].model_id}: {failed[0].error}); the others are in the atlas, and "
            "ingesting the same models again retries only the failed ones"
        )
        self.result = result


def ingest(
    location: str | os.PathLike[str],
    *models: Model,
    from_file: str | os.PathLike[str] | TextIO | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> IngestResult:
    """Decompose ``models`` into the atlas at ``location`` (created if needed).

    A model is ``"minilm"``, a local folder, a hub name or ``"random:SHAPE"``, or a pair
    ``(MODEL, model_id)``; ``from_file`` adds a file of them, one ``MODEL [--name ID]`` a line.
    ``options`` are the command's: ``name`` (one model only), ``device``, ``processing``,
    ``top_k``, ``max_rank``, ``dtype``, ``gap_tol``, ``exact_max``, ``coherence``,
    ``replace``, and for a job on Ray ``ray`` (an address, or ``"local"``), ``gpus_per_task``
    and ``retries``. Several models make a job: each is published when done and one that fails
    does not stop the others (:class:`IngestFailed` afterwards, with the result). Nothing is
    printed: ``log`` is told each stage's line (and a job's line per model), ``progress``
    (``atlas.core.progress``) the blocks of a model done.
    """
    unknown = sorted(set(options) - set(_OPTION_FIELDS) - set(_JOB_OPTIONS))
    if unknown:
        known = ", ".join(sorted({*_OPTION_FIELDS, *_JOB_OPTIONS}))
        raise AtlasError(f"ingest has no option {unknown[0]!r}; its options are: {known}")
    for key, value in options.items():
        _check_option(key, value)
    specs = _model_list(models, from_file)
    ray, gpus, retries = (options.pop(k, None) for k in _JOB_OPTIONS)
    if options.get("name") is not None and len(specs) > 1:
        raise AtlasError("name names one model; give each of several models as (MODEL, name)")
    if ray is None and (gpus is not None or retries is not None):
        raise AtlasError("gpus_per_task and retries are for a job on Ray: give ray too")
    base = IngestOptions(model=specs[0][0], **{_OPTION_FIELDS[k]: v for k, v in options.items()})
    say = log if log is not None else _quiet
    if len(specs) == 1 and from_file is None and ray is None:
        from ingest.job import ingest as ingest_one

        if specs[0][1] is not None:
            base.model_id = specs[0][1]
        report = ingest_one(Path(location), base, log=say, progress=progress or no_progress)
        seconds = report.wall_seconds
        return IngestResult(
            [IngestedModel(report.model_id, base.model, "published", None, seconds, report)]
        )
    from ingest.jobs import run_job

    job = [
        dataclasses.replace(base, model=spec, model_id=spec_id or base.model_id)
        for spec, spec_id in specs
    ]
    retried = DEFAULT_RETRIES if retries is None else retries
    outcomes = run_job(Path(location), job, ray, gpus, retried, log=say)
    ended = [
        IngestedModel(o.model_id, o.spec, o.status, o.error, o.seconds, o.report) for o in outcomes
    ]
    result = IngestResult(ended, job=True)
    if result.failed:
        raise IngestFailed(result)
    return result


def load(
    location: str | os.PathLike[str],
    bundle: str | os.PathLike[str],
    replace: bool = False,
    progress: Progress | None = None,
) -> list[LoadResult]:
    """Import every model of ``bundle`` into the atlas at ``location`` (created if needed):
    verified first, all or nothing; ``replace`` replaces models already there; ``progress``
    (``atlas.core.progress``) is told the models built."""
    return load_bundle(Path(location), Path(bundle), replace, progress or no_progress)


def check(location: str | os.PathLike[str], repair: bool = False) -> CheckReport:
    """Verify the atlas at ``location`` (a directory, or a Parquet tree read-only): tables, ids,
    indexes, checksums and values of every model; ``report.ok`` and ``report.errors``.
    ``repair`` also fixes what can be fixed without the model (indexes, manifests, a lost
    catalog), never changing DuckDB data."""
    if is_tree(location):
        if repair:
            raise AtlasError(
                f"{location} is a Parquet tree: check reads it, but nothing repairs it in "
                "place; export the damaged models into it again"
            )
        from atlas.core.exchange.check_tree import check_tree  # fsspec: not at CLI start

        return check_tree(str(location))
    return repair_atlas(Path(location)) if repair else check_atlas(Path(location))


def is_tree(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a Parquet tree (a URL, or a folder with the tree's marker)."""
    return "://" in str(location) or (Path(location) / MARKER).is_file()


# The command line's ranges and choices, for the same options given from Python.
_INTEGERS = {
    "top_k": (1, 1000),
    "max_rank": (1, None),
    "exact_max": (1, None),
    "retries": (0, None),
}
_NUMBERS = {"gap_tol": (0.0, 1.0), "gpus_per_task": (0.0, math.inf)}
_CHOICES = {"device": DEVICES, "processing": PROCESSING_CHOICES, "dtype": DTYPES}
_FLAGS = ("coherence", "replace")
_TEXTS = ("name", "ray")
_OPTIONAL = ("name", "max_rank", "ray", "gpus_per_task", "retries")


def _check_option(key: str, value: Any) -> None:
    """One ingest option, checked as the command line checks it (one line if it is wrong)."""
    if value is None and key in _OPTIONAL:
        return
    if key in _INTEGERS:
        low, high = _INTEGERS[key]
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        if not ok or (high is not None and value > high):
            span = f"from {low} to {high:,}" if high is not None else f"of {low} or more"
            raise AtlasError(f"{key} must be an integer {span}, not {value!r}")
    elif key in _NUMBERS:
        low_f, high_f = _NUMBERS[key]
        real = isinstance(value, int | float) and not isinstance(value, bool)
        if not real or not (low_f <= value <= high_f) or math.isnan(value):
            raise AtlasError(f"{key} must be a number from {low_f:g} to {high_f:g}, not {value!r}")
    elif key in _CHOICES and value not in _CHOICES[key]:
        raise AtlasError(f"{key} must be one of {', '.join(_CHOICES[key])}, not {value!r}")
    elif key in _FLAGS and not isinstance(value, bool):
        raise AtlasError(f"{key} must be True or False, not {value!r}")
    elif key in _TEXTS and not isinstance(value, str):
        raise AtlasError(f"{key} must be a string, not {value!r}")


def _model_list(
    models: Iterable[Model], from_file: str | os.PathLike[str] | TextIO | None
) -> list[tuple[str, str | None]]:
    specs: list[tuple[str, str | None]] = []
    for m in models:
        if isinstance(m, str):
            specs.append((m, None))
        elif isinstance(m, tuple) and len(m) == 2 and all(isinstance(x, str) for x in m):
            specs.append((m[0], m[1]))
        else:
            raise AtlasError(f"a model is a MODEL string or a (MODEL, model_id) pair, not {m!r}")
    if from_file is not None and not isinstance(from_file, str | os.PathLike):  # an open file
        specs += read_model_list(from_file, getattr(from_file, "name", "the model list"))
    elif from_file is not None:
        try:
            with open(from_file, encoding="utf-8") as fh:
                specs += read_model_list(fh, str(from_file))
        except OSError as exc:
            raise AtlasError(f"cannot read {from_file}: {exc.strerror}") from None
    if not specs:
        raise AtlasError("give a model to ingest (or several, or a file of them)")
    return specs


def _quiet(_message: str) -> None:
    """No progress."""
