"""PreemptionWatch: a signal on one rank stops every rank after the same step (two real gloo ranks, processes of
their own); data_prep's workers stop on SIGTERM (a fresh interpreter)."""

import os
import signal
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import ROOT
from visiontrain.parallel.network import free_port
from visiontrain.train.preemption import PreemptionWatch


def _rank(rank: int, port: int, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    watch = PreemptionWatch(2, torch.device("cpu"), every_steps=4).install()
    answers = []
    for step in range(1, 13):
        if rank == 1 and step == 5:
            os.kill(os.getpid(), signal.SIGUSR1)  # only rank 1 is signalled, after step 5
        answers.append(watch.stop_now(step))
    answers.append(watch.stop_now(13, boundary=True))  # an epoch end checks whatever the step
    out[rank] = (answers, watch.signal_name)
    dist.destroy_process_group()


def test_a_signal_on_one_rank_stops_both_at_the_next_agreement_step():
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(free_port(), results), nprocs=2, join=True)
    expected = [step >= 8 and step % 4 == 0 for step in range(1, 13)] + [True]
    assert results[0][0] == results[1][0] == expected
    assert results[1][1] == "SIGUSR1" and results[0][1] == ""  # rank 0 learned it from rank 1


def test_one_process_stops_at_the_next_step_on_sigterm():
    watch = PreemptionWatch(1, torch.device("cpu"), every_steps=10)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        watch.install()
        assert not watch.stop_now(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watch.stop_now(2) and watch.signal_name == "SIGTERM"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_POOL_UNDER_A_SIGTERM_HANDLER = """
import os, signal, time
from visiontrain.data.prep.beton import worker_pool
signal.signal(signal.SIGTERM, lambda *args: None)  # what a training run leaves in its process
pool = worker_pool(1)
worker = pool._pool[0]
pool.apply(os.getpid)
os.kill(worker.pid, signal.SIGTERM)
deadline = time.time() + 10
while worker.exitcode is None and time.time() < deadline:
    time.sleep(0.05)
print("stopped" if worker.exitcode is not None else "still running", flush=True)
# End this whole session at once (it is its own group): the pool's handler thread may be forking a replacement
# for the stopped worker right now, so a loop over pool._pool could miss it or meet a reaped pid, and a pool
# shutdown could wait for a replacement that still carries the catching handler.
os.killpg(0, signal.SIGKILL)
"""


def test_data_prep_workers_stop_on_sigterm_in_a_process_that_catches_it(tmp_path):
    """data_prep's pool is terminated (SIGTERM) at the end of every scan: workers that inherited a training
    run's catching handler would never stop, and the scan would wait for them for ever."""
    # Output to files, and the interpreter awaited rather than its pipes: whatever outlives the interpreter
    # would hold pipes open until the timeout.
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with open(stdout, "w") as out, open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", _POOL_UNDER_A_SIGTERM_HANDLER], cwd=ROOT, stdout=out,
                                stderr=err, start_new_session=True)
    try:
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever worker is left in its session
        except ProcessLookupError:
            pass
    assert stdout.read_text().strip() == "stopped", stderr.read_text()[-2000:]
