"""PreemptionWatch: a signal on one rank stops every rank after the same step."""

import os
import signal
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import ROOT
from visiontrain.train.preemption import PreemptionWatch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    mp.spawn(_rank, args=(_free_port(), results), nprocs=2, join=True)
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
for process in pool._pool:  # the pool replaced the stopped worker: end every one, whatever their handlers
    os.kill(process.pid, signal.SIGKILL)
os._exit(0)  # no pool shutdown: it is what would hang
"""


def test_data_prep_workers_stop_on_sigterm_in_a_process_that_catches_it():
    """data_prep's pool is terminated (SIGTERM) at the end of every scan: workers that inherited a training
    run's catching handler would never stop, and the scan would wait for them for ever."""
    result = subprocess.run([sys.executable, "-c", _POOL_UNDER_A_SIGTERM_HANDLER], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip() == "stopped", result.stderr[-2000:]
