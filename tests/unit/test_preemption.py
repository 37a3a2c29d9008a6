"""PreemptionWatch: a signal on one rank stops every rank after the same step."""

import os
import signal
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from visiontrain.preemption import PreemptionWatch


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
