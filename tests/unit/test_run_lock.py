"""One writer per run directory: a second run is refused naming the holder; a stale lock (a dead process of this
host, or a holder elsewhere silent too long) is taken over with a line saying so; only the holder releases."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from tests.helpers import ROOT
from visiontrain.train.run_lock import HOST, LOCK_NAME, RunLock

HOLD = ("import sys, time; from visiontrain.train.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "time.sleep(60)")


def test_a_second_writer_is_refused_naming_the_holder_and_the_lock_is_released_at_the_end(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT)
    try:
        deadline = time.time() + 30
        while not (tmp_path / LOCK_NAME).exists():
            assert time.time() < deadline and holder.poll() is None
            time.sleep(0.05)
        time.sleep(0.2)  # its content is written right after the exclusive create
        refusal = RunLock(tmp_path).acquire()
        assert refusal is not None and f"host {HOST}, pid {holder.pid}" in refusal
        assert "is in use by another run" in refusal and "\n" not in refusal
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(tmp_path)  # its holder died: taken over at once, no waiting
    assert lock.acquire() is None
    assert (tmp_path / LOCK_NAME).read_text().split()[:2] == [HOST, str(os.getpid())]
    assert not [p for p in tmp_path.iterdir() if p.name != LOCK_NAME]  # no temporary left beside it
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_holder_on_another_host_is_waited_for_until_its_lock_goes_stale(tmp_path, caplog):
    path = tmp_path / LOCK_NAME
    path.write_text("node7 4242 991 0\n")
    refusal = RunLock(tmp_path, stale_seconds=90).acquire()
    assert refusal is not None and "host node7, pid 4242, SLURM job 991" in refusal
    old = time.time() - 120
    os.utime(path, (old, old))  # node7 went away two minutes ago
    with caplog.at_level(logging.WARNING):
        lock = RunLock(tmp_path, stale_seconds=90)
        assert lock.acquire() is None
    assert "took over the lock" in caplog.text and "node7" in caplog.text and "not renewed for 12" in caplog.text
    lock.release()


def test_release_never_removes_another_runs_lock(tmp_path):
    lock = RunLock(tmp_path)
    assert lock.acquire() is None
    (tmp_path / LOCK_NAME).write_text("node7 4242 -\n")  # taken over while this run was silent
    lock.release()
    assert (tmp_path / LOCK_NAME).read_text() == "node7 4242 -\n"


def test_an_earlier_life_of_the_same_slurm_job_is_taken_over_at_once(tmp_path, monkeypatch, caplog):
    (tmp_path / LOCK_NAME).write_text("node7 4242 991 0\n")  # fresh, on another node: the job before its requeue
    monkeypatch.setenv("SLURM_JOB_ID", "991")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same life (another step of the job): not taken
    assert "is in use by another run" in RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued once since
    with caplog.at_level(logging.WARNING):
        lock = RunLock(tmp_path)
        assert lock.acquire() is None
    assert "an earlier life of this job" in caplog.text
    lock.release()
