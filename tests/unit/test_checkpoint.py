import os
import pickle

import pytest
import torch

from visiontrain.checkpoint import CheckpointStore, CorruptCheckpoint, load_checkpoint
from visiontrain.checkpoint.weights import export_weights, plain_state_dict, read_weights
from visiontrain.infra.errors import UsageError


def state(step: int) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "trainer": {"step": step}}


def test_keeps_the_last_n_periodic_checkpoints_plus_best(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    store.save(state(10), 10, periodic=True, best=True)
    store.save(state(20), 20, periodic=True, best=False)
    store.save(state(30), 30, periodic=True, best=False)
    assert [p.name for p in store.periodic()] == ["step_000000030.pt", "step_000000020.pt"]
    assert load_checkpoint(store.best_path)["trainer"]["step"] == 10
    loaded, path = store.load_latest()
    assert path.name == "step_000000030.pt" and torch.equal(loaded["model"]["w"], torch.full((3,), 30.0))


def test_a_crash_while_writing_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep_last=2)
    store.save(state(1), 1, periodic=True, best=False)

    def dies_mid_write(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(OSError):
        store.save(state(2), 2, periodic=True, best=True)
    monkeypatch.undo()
    assert sorted(os.listdir(store.dir)) == ["step_000000001.pt"]  # no temp file, no step 2, no best.pt


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        store.save(state(step), step, periodic=True, best=False)
    newest = store.periodic()[0]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CorruptCheckpoint, match=str(newest)):
        load_checkpoint(newest)
    loaded, path = store.load_latest()
    assert loaded["trainer"]["step"] == 2
    assert f"checkpoint {newest} is unreadable" in caplog.text and "falling back" in caplog.text


def test_no_readable_checkpoint_is_a_usage_error_naming_every_file(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    store.save(state(1), 1, periodic=True, best=True)
    for path in store.dir.iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(UsageError) as info:
        store.load_latest()
    assert "step_000000001.pt" in str(info.value) and "best.pt" in str(info.value)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "x": Payload()}, path, pickle_module=pickle)
    with pytest.raises(CorruptCheckpoint, match="unreadable"):
        load_checkpoint(path)


def test_exported_safetensors_are_plain_tensors_equal_to_the_module(tmp_path):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    module.to(memory_format=torch.channels_last)
    export_weights(plain_state_dict(module), tmp_path / "w.safetensors")
    weights = read_weights(tmp_path / "w.safetensors")
    assert set(weights) == set(module.state_dict())
    assert all(torch.equal(weights[k], v) for k, v in module.state_dict().items())
    assert oct((tmp_path / "w.safetensors").stat().st_mode & 0o777) != oct(0o600)
