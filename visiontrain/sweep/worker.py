"""A sweep worker: claims trials one after another and runs each as a visiontrain run directory.

Claiming happens under the study's claim lock (an O_EXCL lock file beside the journal), in this order:
1. a RUNNING trial this worker id owns whose process is gone: its earlier life was preempted or killed (a
   requeued SLURM array task keeps its id), so it resumes that run directory; one still alive on this host
   (two workers started with one id) is left alone;
2. a RUNNING trial whose lease expired (its worker stopped renewing `leases/NNNN` for `lease_seconds`), or
   whose lease names a process of this host that is gone: taken over and resumed; a trial whose claim was
   interrupted before its values were all drawn is FAIL;
3. a new trial, while fewer than `trials` exist (the budget counts every trial, whatever its end).

A trial's train.py ends in one of four ways, each told to the study once, by the worker that still owns it:
exit 0 -> COMPLETE with the final evaluation's metric, or PRUNED when the pruner stopped it (summary.json);
exit 2 (bad config) -> FAIL with its error line, not retried; exit 3 (stopped on a signal with a checkpoint),
or any end after this worker was signalled -> the trial stays RUNNING and owned, and the worker exits 3 so
that its job is requeued; anything else (exit 1, killed) -> FAIL with the last line of its log. A worker
whose lease was taken over (it was silent for too long) stops its trial and tells nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiontrain.infra.errors import UsageError
from visiontrain.infra.fileio import process_alive, read_json, write_text
from visiontrain.sweep.report import TRIAL_FILE
from visiontrain.sweep.spec import SweepSpec
from visiontrain.sweep.study import StudyDir, file_lock, make_sampler, trial_file_contents

log = logging.getLogger(__name__)

PREEMPTED = 3
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


@dataclass
class Claim:
    trial_id: int
    number: int
    params: dict[str, Any]
    how: str  # new | resumed | taken over from <worker>


def default_worker_id(environ=os.environ) -> str:
    """SLURM array task -> JOBID_TASK (the same after a requeue); a SLURM job -> its id; else host-pid."""
    job, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if job and task:
        return f"{job}_{task}"
    if environ.get("SLURM_JOB_ID"):
        return environ["SLURM_JOB_ID"]
    return f"{HOST}-{os.getpid()}"


HOST = os.uname().nodename



class Lease:
    """`leases/NNNN`: "WORKER HOST PID", its modification time renewed by a thread while the trial runs. A renewal
    that finds another worker's id there (the lease expired and was taken over) calls `on_lost` and stops."""

    def __init__(self, path: Path, worker_id: str, period: float, on_lost=None):
        self.path, self.worker_id, self.period, self.on_lost = path, worker_id, period, on_lost
        self.lost_to: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True)

    @staticmethod
    def write(path: Path, worker_id: str) -> None:
        write_text(path, f"{worker_id} {HOST} {os.getpid()}\n")

    @staticmethod
    def read(path: Path) -> tuple[str, str, int] | None:
        try:
            worker, host, pid = path.read_text().split()
            return worker, host, int(pid)
        except (OSError, ValueError):
            return None

    def __enter__(self) -> Lease:
        self.write(self.path, self.worker_id)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.period):
            holder = self.read(self.path)
            if holder is not None and holder[0] != self.worker_id:
                self.lost_to = holder[0]
                if self.on_lost is not None:
                    self.on_lost()
                return
            try:
                os.utime(self.path)
            except OSError:
                pass  # a full or unreachable file system: the next renewal tries again

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def release(self) -> None:
        holder = self.read(self.path)
        if holder is None or holder[0] == self.worker_id:  # never another worker's lease
            self.path.unlink(missing_ok=True)


class Worker:
    def __init__(self, study_dir: StudyDir, worker_id: str, train_command: list[str],
                 spec: SweepSpec | None = None):
        self.dir = study_dir
        self.spec = spec or study_dir.spec()
        self.study = study_dir.open(self.spec)
        self.study.sampler = make_sampler({"name": "random"})  # the spec's sampler is set for each ask (claim)
        self.id = worker_id
        self.train_command = train_command
        self.child: subprocess.Popen | None = None
        self.stopping: str | None = None  # the name of a signal received

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        """Run trials until the budget is spent. 0 when done, 3 when stopped by a signal (requeue me)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED_SIGNALS}
        try:
            while not self.stopping:
                claim = self.claim()
                if claim is None:
                    log.info("worker %s: no trial left to run; %s", self.id, progress_line(self.study, self.spec))
                    return 0
                if self.run_trial(claim) == PREEMPTED:
                    return PREEMPTED
            return PREEMPTED
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, _frame) -> None:
        self.stopping = signal.Signals(signum).name
        # Ctrl-C becomes the preemption signal: the trial checkpoints instead of dying.
        self._signal_trial(signal.SIGUSR1 if signum == signal.SIGINT else signum)

    def _signal_trial(self, signum: int) -> None:
        """The trial's leading process only (train.py, torchrun, srun: each passes it to the ranks); not its group,
        whose data-loader workers would die of it."""
        if self.child is not None:  # not poll(): it could reap the child before run_trial's wait4
            try:
                os.kill(self.child.pid, signum)
            except ProcessLookupError:
                pass  # it has just ended

    # ----------------------------------------------------------------- claim
    def claim(self) -> Claim | None:
        """The next trial to run, its lease written before the claim lock is released (so no other worker sees
        it RUNNING without one); None when the budget is spent and no trial is left to resume."""
        lock = file_lock(self.dir.path / "claims.lock")
        lock.acquire()
        try:
            claim = self._choose()
            if claim is not None:
                Lease.write(self.dir.leases / f"{claim.number:04d}", self.id)
            return claim
        finally:
            lock.release()

    def _choose(self) -> Claim | None:
        from optuna.trial import TrialState

        # FrozenTrial._trial_id: the storage's id of a trial, which Trial(study, id) and the storage calls take.
        trials = self.study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        for t in running:
            if t.user_attrs.get("worker") == self.id:
                if self._holder_alive(t.number):
                    log.warning("worker %s: trial %d is run by a live process with this worker id (%s); leaving it",
                                self.id, t.number, self.dir.leases / f"{t.number:04d}")
                    continue
                return Claim(t._trial_id, t.number, t.params, "resumed")
        for t in running:
            if not (self._lease_expired(t.number) or self._holder_gone_here(t.number)):
                continue
            if "worker" not in t.user_attrs:  # claimed, then killed before every value was drawn
                self.study._storage.set_trial_user_attr(t._trial_id, "error", "its claim was interrupted")
                self.study.tell(t.number, state=TrialState.FAIL)
                continue
            previous = t.user_attrs["worker"]
            self.study._storage.set_trial_user_attr(t._trial_id, "worker", self.id)
            return Claim(t._trial_id, t.number, t.params, f"taken over from {previous}")
        if len(trials) >= self.budget():
            return None
        # A sampler seeded by (seed, trial number): workers with the same spec would otherwise draw the
        # same values, and a study's draws do not depend on which worker asked.
        self.study.sampler = make_sampler(self.spec.sampler, self.spec.space, trial_number=len(trials))
        try:
            trial = self.study.ask()
            params = self._suggest(trial)
        finally:
            # Telling a result runs the sampler's after_trial: the grid sampler's calls study.stop() once the
            # grid is done, which only works inside study.optimize. Telling needs no sampler of the spec's.
            self.study.sampler = make_sampler({"name": "random"})
        trial.set_user_attr("worker", self.id)
        return Claim(trial._trial_id, trial.number, params, "new")

    def budget(self) -> int:
        grid = [p.grid() for p in self.spec.space] if self.spec.sampler["name"] == "grid" else None
        if grid:
            size = 1
            for values in grid:
                size *= len(values)
            return min(self.spec.trials, size)
        return self.spec.trials

    def _suggest(self, trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for param in self.spec.space:
            if all(chosen.get(key) == value for key, value in param.when):
                chosen[param.key] = param.suggest(trial)
        return chosen

    def _holder_alive(self, number: int) -> bool:
        """Whether the lease of trial `number` names a live process on this host (a requeued task's old process
        is gone; one on another host is trusted to be gone too: SLURM array ids are unique per task)."""
        holder = Lease.read(self.dir.leases / f"{number:04d}")
        if holder is None or self._lease_expired(number):
            return False
        _, host, pid = holder
        return host == HOST and pid != os.getpid() and process_alive(pid)

    def _holder_gone_here(self, number: int) -> bool:
        """Its lease names a process of this host that no longer runs (a preempted local worker): no need to
        wait for the lease to expire."""
        holder = Lease.read(self.dir.leases / f"{number:04d}")
        return holder is not None and holder[1] == HOST and not process_alive(holder[2])

    def _lease_expired(self, number: int) -> bool:
        path = self.dir.leases / f"{number:04d}"
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True  # claimed, then killed before its lease was written
        return age > self.spec.lease_seconds

    # ------------------------------------------------------------------- run
    def run_trial(self, claim: Claim) -> int:
        if self.stopping:  # signalled while claiming: leave the trial RUNNING and owned, to resume
            return PREEMPTED
        run_dir = self.dir.trial_dir(claim.number)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / TRIAL_FILE, trial_file_contents(self.dir, self.spec, claim.trial_id, claim.number))
        self.study._storage.set_trial_user_attr(claim.trial_id, "run_dir", str(run_dir))
        command = [*self.train_command, *(["-c", self.spec.config] if self.spec.config else []),
                   *self.spec.trial_overrides(claim.params, run_dir)]
        log.info("worker %s: trial %d (%s) %s", self.id, claim.number, claim.how,
                 " ".join(f"{k}={v}" for k, v in claim.params.items()))
        lease = Lease(self.dir.leases / f"{claim.number:04d}", self.id, max(1.0, self.spec.lease_seconds / 5),
                      on_lost=lambda: self._signal_trial(signal.SIGTERM))
        # torchrun passes SIGTERM and SIGINT on to its ranks; SIGUSR1 too with this (its ranks have sessions of
        # their own, so only torchrun can reach them).
        env = {**os.environ, "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}
        started = time.time()
        stop_leftovers(run_dir)  # an earlier owner's training that outlived its worker: this worker owns it now
        with lease, open(run_dir / "trial.log", "ab") as out:
            out.write(f"\n=== {time.strftime('%F %T')} worker {self.id}: {' '.join(command)}\n".encode())
            out.flush()
            # A session of its own: a terminal's Ctrl-C reaches the worker, which passes it on as SIGUSR1.
            self.child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)
            if self.stopping:  # the signal came while the trial was starting
                self._signal_trial(signal.SIGTERM)
            # wait4: the exit status and the CPU time of the trial's process and of the children it waited for
            # (torchrun's ranks; not srun's tasks, which belong to SLURM's step daemon)
            _, status, usage = os.wait4(self.child.pid, 0)
            code = self.child.returncode = os.waitstatus_to_exitcode(status)
            self.child = None
        seconds = time.time() - started
        if lease.lost_to is not None:  # the new owner's processes may run here: leave them alone
            log.warning("worker %s: trial %d was taken over by %s (this worker's lease had expired); it stopped the "
                        "trial and tells nothing", self.id, claim.number, lease.lost_to)
            return 0
        stop_leftovers(run_dir)
        if code == 2 and "is in use by another run" in last_error_line(run_dir / "trial.log"):
            # Not a bad config: an earlier process of this trial still holds the run directory (e.g. one on
            # another node, until its run lock goes stale). Leave the trial RUNNING and owned; try again later.
            log.warning("worker %s: trial %d: its run directory is still in use; stopping (exit 3) to retry later",
                        self.id, claim.number)
            return PREEMPTED
        self.study._storage.set_trial_user_attr(
            claim.trial_id, "cpu_seconds", round(usage.ru_utime + usage.ru_stime, 1) + self._earlier_cpu(claim))
        if code == PREEMPTED or (self.stopping and code != 0):
            log.info("worker %s: trial %d stopped (%s, exit %d); it resumes when this worker restarts", self.id,
                     claim.number, self.stopping or "a signal", code)
            return PREEMPTED
        if not self._still_ours(claim):
            return code
        self._tell(claim, code, run_dir, seconds)
        lease.release()
        log.info("worker %s: %s", self.id, progress_line(self.study, self.spec))
        return code

    def _still_ours(self, claim: Claim) -> bool:
        trial = self.study._storage.get_trial(claim.trial_id)
        owner = trial.user_attrs.get("worker")
        if trial.state.name == "RUNNING" and owner == self.id:
            return True
        log.warning("worker %s: trial %d is now %s, owned by %s: its result is not told again", self.id,
                    claim.number, trial.state.name, owner)
        return False

    def _earlier_cpu(self, claim: Claim) -> float:
        """CPU seconds of the trial's earlier runs (before a preemption: their record is in the study)."""
        trial = self.study._storage.get_trial(claim.trial_id)
        return float(trial.user_attrs.get("cpu_seconds", 0.0))

    def _tell(self, claim: Claim, code: int, run_dir: Path, seconds: float) -> None:
        from optuna.trial import TrialState

        storage = self.study._storage
        storage.set_trial_user_attr(claim.trial_id, "exit_code", code)
        storage.set_trial_user_attr(claim.trial_id, "seconds_last_run", round(seconds, 1))
        if code == 0:
            try:
                summary = read_json(run_dir / "summary.json", "trial summary")
                summary["final"][self.spec.metric]
            except (UsageError, KeyError, TypeError) as err:  # ended 0 without the result: FAIL, not a crash
                storage.set_trial_user_attr(claim.trial_id, "error", f"no {self.spec.metric} in its summary: {err}")
                self.study.tell(claim.number, state=TrialState.FAIL)
                log.warning("worker %s: trial %d failed: no result in %s", self.id, claim.number, run_dir)
                return
            if summary.get("pruned"):
                self.study.tell(claim.number, state=TrialState.PRUNED)
                log.info("worker %s: trial %d pruned after epoch %d", self.id, claim.number, summary["epochs"])
                return
            value = summary["final"][self.spec.metric]
            self.study.tell(claim.number, value)
            log.info("worker %s: trial %d complete: %s %.4f", self.id, claim.number, self.spec.metric, value)
            return
        error = last_error_line(run_dir / "trial.log") or (f"killed by signal {-code}" if code < 0 else "")
        storage.set_trial_user_attr(claim.trial_id, "error", error)
        self.study.tell(claim.number, state=TrialState.FAIL)
        kind = "bad configuration, not retried" if code == 2 else "failed"
        log.warning("worker %s: trial %d %s (exit %d): %s", self.id, claim.number, kind, code, error)


def stop_leftovers(run_dir: Path) -> None:
    """SIGKILL processes of this machine still training in `run_dir` after the trial's leader ended (ranks a
    launcher left behind): two writers must never share a run directory."""
    import psutil

    marker = f"run.dir={run_dir}"
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and marker in (proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def last_error_line(log_path: Path) -> str:
    """The last line that names an error (the one-line errors of exit 1 and 2), else the last non-empty line."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if line.lower().startswith("error") or "Error:" in line:
            return line[:500]
    return lines[-1][:500] if lines else ""


def counts(study) -> dict[str, int]:
    out = {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out


def progress_line(study, spec: SweepSpec) -> str:
    c = counts(study)
    return (f"{c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed, {c['running']} running "
            f"of {spec.trials} trials")


def default_train_command() -> list[str]:
    return [sys.executable, "-m", "visiontrain", "train"]
