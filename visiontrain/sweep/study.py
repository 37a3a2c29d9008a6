"""A study directory and the Optuna study inside it.

    STUDY/spec.yaml        the sweep spec the study was created with (a different space is refused)
    STUDY/study.json       its storage URL
    STUDY/journal.log      the default storage: Optuna's journal file
    STUDY/trials/NNNN/     trial NNNN's run directory (a visiontrain run: checkpoints, metrics, summary.json)
    STUDY/leases/NNNN      the heartbeat of the worker running trial NNNN
    STUDY/workers/ID.log   each worker's log

Storage: the journal file, locked with Optuna's `JournalFileOpenLock` (an `open(O_CREAT | O_EXCL)` lock file:
atomic on local file systems and on NFSv3 or later, where SQLite's locks are not; Optuna's symlink lock is
the alternative for older NFS). A lock left by a killed process is broken after `LOCK_GRACE_SECONDS`.
Or any SQLAlchemy URL (`--storage postgresql://...`) for users with a database server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from visiontrain.infra.errors import UsageError
from visiontrain.infra.fileio import read_json, write_json, write_text
from visiontrain.sweep.spec import SweepSpec, parse_spec

STUDY_NAME = "sweep"
LOCK_GRACE_SECONDS = 60


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UsageError("sweeps need optuna: install the sweep extra (make setup, or pip install "
                         "'visiontrain[sweep]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def file_lock(path: Path):
    """The O_EXCL lock file Optuna's journal uses, for the study's other critical sections (claiming trials)."""
    from optuna.storages.journal import JournalFileOpenLock

    return JournalFileOpenLock(str(path), grace_period=LOCK_GRACE_SECONDS)


def storage_for(url: str):
    optuna = _optuna()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal:")
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=file_lock(Path(path))))
    return optuna.storages.RDBStorage(url)


def make_sampler(options: dict[str, Any], space=(), trial_number: int = 0):
    """The spec's sampler; a seeded TPE or random sampler draws from a seed derived from (seed, trial_number)
    (each ask gets a sampler of its own). Derived through numpy's SeedSequence, not seed + number: the
    Mersenne Twister seeded with nearby integers starts with nearby numbers (seeds 0 and 3 both draw 0.55
    first). The grid sampler keeps its seed: it orders the grid, and the storage records which points ran."""
    optuna = _optuna()
    name, seed = options["name"], options.get("seed")
    if seed is not None and name != "grid":
        seed = int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({p.key: p.grid() for p in space}, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=options.get("n_startup_trials", 10))


def make_pruner(options: dict[str, Any]):
    optuna = _optuna()
    settings = {key: value for key, value in options.items() if key != "name"}
    return {
        "none": lambda: optuna.pruners.NopPruner(),
        "median": lambda: optuna.pruners.MedianPruner(**settings),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(**settings),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(**settings),
        "threshold": lambda: optuna.pruners.ThresholdPruner(**settings),
    }[options["name"]]()


def load_study(storage_url: str, sampler=None, pruner=None):
    return _optuna().load_study(study_name=STUDY_NAME, storage=storage_for(storage_url), sampler=sampler,
                                pruner=pruner)


class StudyDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.spec_file = self.path / "spec.yaml"
        self.trials = self.path / "trials"
        self.leases = self.path / "leases"
        self.workers = self.path / "workers"

    def exists(self) -> bool:
        return self.spec_file.is_file()

    def trial_dir(self, number: int) -> Path:
        return self.trials / f"{number:04d}"

    def storage_url(self) -> str:
        return read_json(self.path / "study.json", "study file")["storage"]

    def spec(self) -> SweepSpec:
        if not self.exists():
            raise UsageError(f"{self.path} is not a study directory (no spec.yaml): start one with "
                             "python -m visiontrain sweep run SPEC --study DIR")
        return parse_spec(yaml.safe_load(self.spec_file.read_text()), str(self.spec_file))

    def create_or_check(self, spec: SweepSpec, storage: str | None) -> None:
        """Bind a new directory to `spec` (and create the study), or check an existing one holds the same
        space, metric, sampler and pruner. The budget and the lease may change."""
        if self.exists():
            old = self.spec()
            if old.identity() != spec.identity():
                changed = next(k for k in old.identity() if old.identity()[k] != spec.identity()[k])
                raise UsageError(f"study {self.path} was created with another {changed} (see its spec.yaml); "
                                 "use a new --study directory for a new search")
            if storage and storage != self.storage_url():
                raise UsageError(f"study {self.path} uses storage {self.storage_url()}, not {storage}")
            write_text(self.spec_file, yaml.safe_dump(spec.source, sort_keys=False))  # a new budget / lease
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise UsageError(f"--study {self.path} exists, is not empty and is not a study directory")
        optuna = _optuna()
        if storage:  # a database URL: reachable and usable before anything is written here
            try:
                database = storage_for(storage)
            except Exception as err:  # SQLAlchemy's errors: a bad URL, a missing driver, an unreachable server
                detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise UsageError(f"--storage {storage}: cannot be opened: {detail}") from None
        self.path.mkdir(parents=True, exist_ok=True)
        for folder in (self.trials, self.leases, self.workers):
            folder.mkdir(exist_ok=True)
        url = storage or f"journal:{(self.path / 'journal.log').resolve()}"
        optuna.create_study(study_name=STUDY_NAME, storage=database if storage else storage_for(url),
                            direction=spec.direction, load_if_exists=True)
        write_json(self.path / "study.json", {"storage": url, "study_name": STUDY_NAME})
        write_text(self.spec_file, yaml.safe_dump(spec.source, sort_keys=False))  # last: the directory is complete

    def open(self, spec: SweepSpec | None = None):
        spec = spec or self.spec()
        return load_study(self.storage_url(), make_sampler(spec.sampler, spec.space), make_pruner(spec.pruner))


def trial_file_contents(study: StudyDir, spec: SweepSpec, trial_id: int, number: int) -> str:
    """What the trainer reads from its run directory to report to the study (sweep/report.py)."""
    return json.dumps({"storage": study.storage_url(), "trial_id": trial_id, "number": number,
                       "metric": spec.metric, "pruner": spec.pruner}, indent=1)
