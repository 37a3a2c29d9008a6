"""One writer per run directory: a lease file, `RUN_DIR/writer.lock`, held by rank 0 for the run's lifetime.

Two runs on one directory (a job submitted twice, a requeued job starting while the old allocation still runs)
would interleave their metrics and overwrite each other's checkpoints. `flock` does not help: on many NFS
setups it is local to a node. So the lock is a file created whole, as a hard link to a complete temporary
(the link fails when the lock exists: atomic on local file systems and NFS), naming host, pid, SLURM job and
restart count, its modification time renewed by a thread every RENEW_SECONDS. A second writer finds it and
stops with one line naming the holder (exit 2, nothing written). A lock is stale, and taken over with a line
saying so, when its holder is a dead process of this host (a run killed and started again at once), an earlier
life of this SLURM job (a lower restart count: requeued, on any node), or when it has not been renewed for
STALE_SECONDS (a holder on another node that went away: its pid cannot be checked from here).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from pathlib import Path

from visiontrain.infra.fileio import process_alive

log = logging.getLogger(__name__)

LOCK_NAME = "writer.lock"
RENEW_SECONDS = 15.0
STALE_SECONDS = 90.0
HOST = os.uname().nodename

_held: dict[Path, RunLock] = {}


def _read_holder(path: Path) -> tuple[str, int, str, int, float] | None:
    """(host, pid, job, restart count, seconds since its last renewal) written in the lock file `path`; None when
    there is none. The file is created whole (a link to a complete temporary), so it is never read half-written."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    fields = text.split()
    try:
        return fields[0], int(fields[1]), fields[2], int(fields[3]), age
    except (IndexError, ValueError):  # not ours, or damaged: stale once old enough
        return "?", -1, "-", 0, age


class RunLock:
    def __init__(self, run_dir: Path, stale_seconds: float = STALE_SECONDS, renew_seconds: float = RENEW_SECONDS):
        self.path = Path(run_dir).absolute() / LOCK_NAME
        self.stale_seconds, self.renew_seconds = stale_seconds, renew_seconds
        # SLURM_RESTART_COUNT tells a requeued job's lives apart (one job id may also run several live steps)
        self.me = (f"{HOST} {os.getpid()} {os.environ.get('SLURM_JOB_ID', '-')} "
                   f"{os.environ.get('SLURM_RESTART_COUNT', '0')}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> tuple[str, int, str, int, float] | None:
        return _read_holder(self.path)

    def _create(self) -> bool:
        """Create the lock with its content in one step: a hard link to a complete temporary file (EEXIST when
        another run holds it; atomic on local file systems and NFS)."""
        temp = self.path.with_name(f".{LOCK_NAME}.{HOST}.{os.getpid()}.tmp")
        temp.write_text(self.me + "\n")
        try:
            os.link(temp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)

    def acquire(self) -> str | None:
        """Take the lock (or take over a stale one); None when held, else the one-line reason it is not."""
        for _ in range(5):  # a holder may release, or another taker win, between the steps below
            if self._create():
                return self._start()
            holder = self.holder()
            if holder is None:
                continue
            host, pid, job, restart, age = holder
            if host == HOST and pid == os.getpid():
                return self._start()  # this process took it already (a second run built in one process)
            # An earlier life of this very SLURM job (requeued, perhaps onto another node) is gone: SLURM never
            # runs one job's two lives at once.
            requeued = (job != "-" and job == os.environ.get("SLURM_JOB_ID")
                        and restart < int(os.environ.get("SLURM_RESTART_COUNT", "0")))
            dead = (host == HOST and not process_alive(pid)) or requeued
            if not dead and age <= self.stale_seconds:
                where = f"host {host}, pid {pid}" + (f", SLURM job {job}" if job != "-" else "")
                return (f"run.dir={self.path.parent} is in use by another run ({where}; its lock {self.path} was "
                        f"renewed {age:.0f} s ago): wait for it to end, or use another run.dir")
            why = "an earlier life of this job" if requeued else "its process is gone" if dead else (
                f"not renewed for {age:.0f} s")
            self._take_over(holder, why)
        return f"run.dir={self.path.parent}: its lock {self.path} keeps changing hands; another run is starting there"

    def _take_over(self, holder, why: str) -> None:
        """Move the stale lock aside (one rename succeeds: of two takers, one finds nothing to move) and check it is
        the one judged stale; the next round's create then competes like any start."""
        aside = self.path.with_name(f".{LOCK_NAME}.{HOST}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another taker moved it first
        moved = _read_holder(aside)
        if moved is not None and moved[:4] != holder[:4]:  # a fresh lock, created after our look: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            log.warning("took over the lock of run.dir=%s from host %s, pid %s (%s)", self.path.parent, holder[0],
                        holder[1], why)
        aside.unlink(missing_ok=True)

    def _start(self) -> None:
        previous = _held.get(self.path.parent)
        if previous is not None and previous is not self:
            previous._stop.set()  # the same run directory locked again by this process: one renewer
        _held[self.path.parent] = self
        if self._thread is None:
            self._thread = threading.Thread(target=self._renew, daemon=True, name="run-lock")
            self._thread.start()
        return None

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            try:
                if self.path.read_text().strip() != self.me:
                    log.error("the lock of run.dir=%s was taken over by another run (%s): this run was silent for "
                              "too long; its checkpoints may now be overwritten", self.path.parent,
                              self.path.read_text().strip())
                    return
                os.utime(self.path)
            except OSError:
                continue  # an unreachable file system: the next renewal tries again

    def release(self) -> None:
        self._stop.set()
        _held.pop(self.path.parent, None)
        try:
            if self.path.read_text().strip() == self.me:  # never another run's lock
                self.path.unlink()
        except OSError:
            pass


def release(run_dir: Path) -> None:
    """Release this process's lock of `run_dir`, if it holds one."""
    lock = _held.get(Path(run_dir).absolute())
    if lock is not None:
        lock.release()


def release_all() -> None:
    for lock in list(_held.values()):
        lock.release()


atexit.register(release_all)
