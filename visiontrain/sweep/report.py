"""The trainer's side of a sweep: after every evaluation, report the metric to the trial and ask whether to
prune.

A run directory that belongs to a study holds `sweep_trial.json` (written by the sweep worker before it
starts train.py), so the report works whatever launched the run (a plain process, torchrun, srun) and
after every resume. Rank 0 alone talks to the study; the decision reaches every rank through one
collective, so all ranks stop at the same epoch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from visiontrain.parallel.runtime import Runtime, all_ranks_agree

log = logging.getLogger(__name__)

TRIAL_FILE = "sweep_trial.json"


class TrialReporter:
    def __init__(self, settings: dict[str, Any], runtime: Runtime):
        self.settings, self.runtime = settings, runtime
        self.metric = settings["metric"]
        self.trial = None
        if runtime.is_main:  # only rank 0 opens the storage
            try:
                import optuna

                from visiontrain.sweep.study import load_study, make_pruner

                study = load_study(settings["storage"], pruner=make_pruner(settings["pruner"]))
                self.trial = optuna.trial.Trial(study, settings["trial_id"])
            except Exception as err:  # the storage's own errors, whatever they are: training goes on
                self._give_up(err)

    def _give_up(self, err: Exception) -> None:
        """Reporting failed on rank 0 (a storage error, a trial no longer RUNNING): the run goes on without it, and
        the other ranks, waiting in the collective below, hear "continue" as usual."""
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        log.warning("sweep trial %s: reporting to the study failed (%s); the run goes on without reporting",
                    self.settings.get("number"), detail)
        self.trial = None

    @classmethod
    def for_run_dir(cls, run_dir: Path, runtime: Runtime) -> TrialReporter | None:
        path = Path(run_dir) / TRIAL_FILE
        if not path.is_file():
            return None
        return cls(json.loads(path.read_text()), runtime)

    def report(self, epoch: int, val: dict[str, Any], device: torch.device) -> bool:
        """Report `val[metric]` at step `epoch`; True (on every rank) when the pruner stops the trial.
        A collective: every rank calls it after the same evaluation."""
        prune = False
        if self.trial is not None:
            try:
                self.trial.report(float(val[self.metric]), step=epoch)  # a resumed run's repeated step is ignored
                prune = self.trial.should_prune()
            except Exception as err:
                self._give_up(err)
        # all ranks agree on "continue" unless rank 0 decided to prune
        return not all_ranks_agree(not prune, self.runtime.world_size, device)
