"""Sweeps: workers sharing a journal study count every trial once; each trial's end (complete, bad config, crash,
pruned, preempted) reaches the study as it should; a killed worker's trial is taken back and resumed; with the
real trainer, a pruned trial ends with its checkpoint and a trial killed mid-run ends with the weights of an
uninterrupted one. The worker tests run a stand-in for train.py (tests/sweep_fake_trial.py) that starts in
milliseconds; the trainer tests train the tiny model."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import PYTHON, ROOT, checkpoint_logged, kill_tree, ok, read_json, read_jsonl, run_train, tiny_args

FAKE = f"{PYTHON} tests/sweep_fake_trial.py"
HOST = os.uname().nodename  # local workers are HOST-0, HOST-1, ...


def write_spec(path: Path, **fields) -> Path:
    spec = {"config": "configs/demo/train.yaml", "metric": "top1", "trials": 4,
            "sampler": {"name": "random", "seed": 0}, **fields}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sweep(*args, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "visiontrain", "sweep", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def trials_of(study_dir: Path):
    from visiontrain.sweep.study import StudyDir

    return StudyDir(study_dir).open().get_trials()


def runs_started(run_dir: Path) -> int:
    return (run_dir / "trial.log").read_text().count("\n=== ")


@pytest.mark.slow
def test_two_workers_share_a_journal_study_without_losing_or_repeating_a_trial(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", trials=30, overrides=["train.epochs=2"],
                      space={"optim.lr": {"type": "float", "low": 0.001, "high": 1.0, "log": True}})
    result = sweep("run", spec, "--study", tmp_path / "study", "--workers", "2", "--train-command", FAKE)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = trials_of(tmp_path / "study")
    assert sorted(t.number for t in trials) == list(range(30))
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert all(t.value == pytest.approx(100 * t.params["optim.lr"]) for t in trials)
    assert len({t.params["optim.lr"] for t in trials}) == 30  # the workers do not draw the same values
    assert {t.user_attrs["worker"] for t in trials} == {f"{HOST}-0", f"{HOST}-1"}
    dirs = sorted((tmp_path / "study" / "trials").iterdir())
    assert [d.name for d in dirs] == [f"{n:04d}" for n in range(30)]
    assert all(runs_started(d) == 1 for d in dirs)  # no trial ran twice
    # the budget is spent: another worker has nothing to do
    again = sweep("worker", "--study", tmp_path / "study", "--worker-id", "late", "--train-command", FAKE)
    assert again.returncode == 0 and "no trial left to run; 30 complete" in again.stderr
    assert len(trials_of(tmp_path / "study")) == 30


def test_each_way_a_trial_ends_reaches_the_study_once(tmp_path):
    # complete, bad config, crash, pruned, preempted once, run directory in use once, no result (tests/sweep_fake...)
    endings = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    spec = write_spec(tmp_path / "spec.yaml", trials=7, sampler={"name": "grid", "seed": 0},
                      space={"train.label_smoothing": {"type": "categorical", "choices": endings}})
    study = tmp_path / "study"
    first = sweep("run", spec, "--study", study, "--train-command", FAKE)
    assert first.returncode == 3, first.stderr[-3000:]  # stopped by a trial to resume: requeue me
    stopped = [t for t in trials_of(study) if t.state.name == "RUNNING"]
    assert len(stopped) == 1 and stopped[0].params["train.label_smoothing"] in (0.4, 0.5)
    assert stopped[0].user_attrs["worker"] == f"{HOST}-0"
    status = sweep("status", study)
    assert "1 running" in status.stdout and "lease" in status.stdout
    codes = [sweep("run", spec, "--study", study, "--train-command", FAKE).returncode for _ in range(2)]
    assert codes == [3, 0]  # the same command resumes it, then stops at the other one to resume, then ends
    trials = {t.params["train.label_smoothing"]: t for t in trials_of(study)}
    assert len(trials) == 7 and len(trials_of(study)) == 7  # nothing retried, nothing added
    states = {ending: t.state.name for ending, t in trials.items()}
    assert states == {0.0: "COMPLETE", 0.1: "FAIL", 0.2: "FAIL", 0.3: "PRUNED", 0.4: "COMPLETE", 0.5: "COMPLETE",
                      0.6: "FAIL"}
    assert "no top1 in its summary" in trials[0.6].user_attrs["error"]
    assert runs_started(Path(trials[0.5].user_attrs["run_dir"])) == 2  # busy: retried, not failed for good
    assert trials[0.1].user_attrs["exit_code"] == 2 and "is refused here" in trials[0.1].user_attrs["error"]
    assert trials[0.2].user_attrs["error"] == "TrainingFailed: loss became non-finite at step 3"
    assert runs_started(Path(trials[0.4].user_attrs["run_dir"])) == 2
    assert runs_started(Path(trials[0.1].user_attrs["run_dir"])) == 1
    summary = sweep("summary", study)
    assert summary.returncode == 0, summary.stderr[-2000:]
    out = study / "summary"
    assert {"trials.md", "trials.json", "best.yaml", "optimization_history.png"} <= {p.name for p in out.iterdir()}
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["run"]["dir"] == "runs/study_best" and best["train"]["label_smoothing"] in (0.0, 0.4, 0.5)
    assert "| fail |" in (out / "trials.md").read_text()


@pytest.mark.parametrize("holder", ["another node", "this host"])
def test_a_running_trial_whose_worker_is_gone_is_taken_over_by_another_worker(tmp_path, holder):
    spec = write_spec(tmp_path / "spec.yaml", trials=1, lease_seconds=30,
                      space={"train.label_smoothing": {"type": "categorical", "choices": [0.4]}})
    study = tmp_path / "study"
    assert sweep("run", spec, "--study", study, "--train-command", FAKE).returncode == 3  # HOST-0 owns it now
    lease = study / "leases" / "0000"
    if holder == "another node":  # its lease is fresh and its pid cannot be checked from here: wait for expiry
        lease.write_text(f"{HOST}-0 node7 4242\n")
        early = sweep("worker", "--study", study, "--worker-id", "other", "--train-command", FAKE)
        assert early.returncode == 0 and "no trial left" in early.stderr
        old = time.time() - 120
        os.utime(lease, (old, old))  # node7 went silent two minutes ago
    # else: the lease names HOST-0's worker process, which is gone: no need to wait
    late = sweep("worker", "--study", study, "--worker-id", "other", "--train-command", FAKE)
    assert late.returncode == 0 and f"taken over from {HOST}-0" in late.stderr
    (trial,) = trials_of(study)
    assert trial.state.name == "COMPLETE" and trial.user_attrs["worker"] == "other"
    assert not lease.exists()


def _tiny_spec(tmp_path: Path, data: Path, **fields) -> Path:
    overrides = tiny_args(data, tmp_path / "unused")[2:]
    overrides = [o for o in overrides if not o.startswith("run.dir=")] + ["train.epochs=3", "run.device=cpu"]
    return write_spec(tmp_path / "spec.yaml", overrides=overrides, **fields)


@pytest.mark.slow
def test_a_pruned_two_process_trial_stops_after_the_pruning_epoch_with_its_checkpoint(tmp_path, shapes_dir):
    # top1 never reaches 101: the threshold pruner stops the run at its first report after its warm-up (epoch 2)
    spec = _tiny_spec(tmp_path, shapes_dir, trials=1, pruner={"name": "threshold", "lower": 101.0, "n_warmup_steps": 2},
                      space={"optim.lr": {"type": "float", "low": 0.1, "high": 0.2}})
    torchrun = f"{PYTHON} -m torch.distributed.run --standalone --nproc_per_node 2 train.py"
    ok(sweep("run", spec, "--study", tmp_path / "study", "--train-command", torchrun))
    (trial,) = trials_of(tmp_path / "study")
    run_dir = Path(trial.user_attrs["run_dir"])
    assert trial.state.name == "PRUNED" and sorted(trial.intermediate_values) == [1, 2]
    assert trial.user_attrs["cpu_seconds"] > 1.0  # the training process's own CPU time (wait4)
    summary = read_json(run_dir / "summary.json")
    # rank 0 asked the pruner, both ranks stopped after the same epoch with the same weights
    assert summary["pruned"] is True and summary["epochs"] == 2 and summary["stopped_early"] is True
    assert summary["world_size"] == 2 and len({r["params_sha256"] for r in summary["ranks"]}) == 1
    events = read_jsonl(run_dir / "metrics.jsonl")
    pruned = [e for e in events if e["event"] == "pruned"]
    assert len(pruned) == 1 and pruned[0]["epoch"] == 2
    assert trial.intermediate_values[2] == pytest.approx(pruned[0]["value"])
    assert checkpoint_logged(run_dir, epoch=2)


@pytest.mark.slow
def test_a_trial_killed_with_its_worker_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, shapes_dir):
    from visiontrain.checkpoint.weights import read_weights
    from visiontrain.sweep.spec import read_spec
    from visiontrain.sweep.study import StudyDir

    spec = _tiny_spec(tmp_path, shapes_dir, trials=1, space={"optim.lr": {"type": "float", "low": 0.1, "high": 0.2}})
    study_dir = tmp_path / "study"
    StudyDir(study_dir).create_or_check(read_spec(spec), None)  # what `sweep run` does before its workers start
    worker = [PYTHON, "-m", "visiontrain", "sweep", "worker", "--study", str(study_dir), "--worker-id", "array_0"]
    proc = subprocess.Popen(worker, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = study_dir / "trials" / "0000"
    deadline = time.time() + 240
    while not checkpoint_logged(run_dir, epoch=1):
        assert proc.poll() is None and time.time() < deadline, "the trial ended before its first checkpoint"
        time.sleep(0.05)
    kill_tree(proc.pid)  # the node went away: the worker and its training process
    proc.wait()
    for child in _trainers_of(run_dir):
        kill_tree(child)
    (trial,) = trials_of(study_dir)
    assert trial.state.name == "RUNNING"
    ok(subprocess.run(worker, cwd=ROOT, capture_output=True, text=True, timeout=240))  # the requeued array task
    (trial,) = trials_of(study_dir)
    assert trial.state.name == "COMPLETE" and runs_started(run_dir) == 2
    assert any(e["event"] == "resume" for e in read_jsonl(run_dir / "metrics.jsonl"))
    reference = tmp_path / "reference"
    overrides = read_spec(spec).trial_overrides(trial.params, reference)
    ok(run_train(["-c", "configs/demo/train.yaml", *overrides]))
    resumed = read_weights(run_dir / "weights.safetensors")
    uninterrupted = read_weights(reference / "weights.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all((resumed[k] == uninterrupted[k]).all() for k in resumed)
    assert trial.value == read_json(reference / "summary.json")["final"]["top1"]


def _trainers_of(run_dir: Path) -> list[int]:
    """Training processes still running in `run_dir` (the worker started them in a session of their own)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(f"run.dir={run_dir}" == part for part in proc.info["cmdline"] or []):
            found.append(proc.pid)
    return found
