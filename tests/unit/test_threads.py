"""The thread count a process decides once survives every import and loader (FFCV sets torch's to 1 when
imported and to its worker count in its epoch thread)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import build_loaders, cfg_for, single_cpu_runtime
from visiontrain.infra.errors import UsageError
from visiontrain.parallel import threads


def test_the_count_is_the_launchers_or_the_cores_shared_by_this_nodes_processes(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    assert threads.thread_count(1, {}) == 16
    assert threads.thread_count(4, {}) == 4
    assert threads.thread_count(32, {}) == 1
    assert threads.thread_count(4, {"OMP_NUM_THREADS": "3"}) == 3  # the launcher's choice wins
    assert threads.thread_count(1, {"OMP_NUM_THREADS": "6,2"}) == 6  # OpenMP's nested form
    for bad in ("0", "two", "-1"):
        with pytest.raises(UsageError, match=f"OMP_NUM_THREADS='{bad}' is invalid"):
            threads.thread_count(1, {"OMP_NUM_THREADS": bad})


@pytest.mark.parametrize("loader", ["ffcv", "torchvision", "device", "random"])
def test_building_and_reading_each_loader_keeps_the_decided_count(loader, shapes_dir, monkeypatch):
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert threads.use_threads(1, {"OMP_NUM_THREADS": "3"}) == 3 == torch.get_num_threads()
        torch.set_num_threads(1)  # what importing FFCV does (in this process it is imported already)

        data = build_loaders(cfg_for(shapes_dir, loader), single_cpu_runtime(), 32)
        assert torch.get_num_threads() == 3
        data.train.set_epoch(0)
        next(iter(data.train))
        next(iter(data.val))
        assert torch.get_num_threads() == 3
    finally:
        threads.use_threads(1, {"OMP_NUM_THREADS": str(previous)})
