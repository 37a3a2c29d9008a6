"""Two SLURM nodes on one machine (scripts/slurm_cluster.sh --nodes 2): node1 and node2 are network
namespaces with their own addresses, host names and /etc/hosts (each names itself 127.0.1.1, as
Debian does). Training across them: sbatch, the pipeline, preemption, a lost node, submitit and
torchrun, each compared with the same run on one node."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    PYTHON,
    ROOT,
    assert_identical_continuation,
    checkpoint_logged,
    kill_tree,
    ok,
    read_json,
    read_jsonl,
    run_train,
    tiny_args,
)
from tests.slurm.conftest import EXTRA, cluster_nodes, job_field, overrides, sbatch, wait_for_state
from visiontrain.checkpoint.weights import read_weights

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm2")]

# One task on each of the two nodes, no GPU.
TWO_NODES = ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1")
CONFIG = "configs/demo/train.yaml"


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = read_weights(a / "weights.safetensors"), read_weights(b / "weights.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"{a} and {b} differ"


def assert_spans_both_nodes(summary: dict, env: dict[str, str]) -> None:
    nodes = cluster_nodes(env)
    assert summary["world_size"] == 2
    ranks = sorted(summary["ranks"], key=lambda r: r["rank"])
    assert [r["host"] for r in ranks] == ["node1", "node2"]
    assert [r["node_address"] for r in ranks] == [address for _, _, address in nodes]
    assert {r["socket_interface"] for r in ranks} == {"vt0"}
    assert len({r["params_sha256"] for r in ranks}) == 1, "parameters differ between the nodes"


def on_node(env: dict[str, str], node: int, *cmd: str) -> list[str]:
    """`cmd` run on node `node` of the cluster: its network, host name and /etc/hosts."""
    pid = (Path(env["CLUSTER_DIR"]) / f"slurmd-node{node}.pid").read_text().strip()
    return ["nsenter", "-t", pid, "-n", "-u", "-m", f"--wd={ROOT}", *cmd]


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def two_node_run(slurm2, shapes_dir, tmp_path_factory) -> tuple[Path, str]:
    """slurm/pretrain.sh on two nodes, one task each, run to the end: (run dir, job id)."""
    run_dir = tmp_path_factory.mktemp("two-nodes") / "uninterrupted"
    job, rc = sbatch(slurm2, "slurm/pretrain.sh", CONFIG, *overrides(shapes_dir, run_dir, *EXTRA),
                     options=(*TWO_NODES, f"--output={run_dir.parent}/slurm-%j.out"))
    assert rc == 0, (run_dir / f"slurm-{job}.log").read_text()[-3000:]
    return run_dir, job


def test_sbatch_on_two_nodes_forms_one_world_equal_to_two_processes_on_one_node(slurm2, two_node_run, shapes_dir,
                                                                                tmp_path):
    run_dir, job = two_node_run
    summary = read_json(run_dir / "summary.json")
    assert summary["launcher"] == "slurm"
    assert_spans_both_nodes(summary, slurm2)
    assert "2 node(s) x 1 task(s), head node node1" in (run_dir / f"slurm-{job}.log").read_text()
    single = tmp_path / "one-node"
    ok(run_train(tiny_args(shapes_dir, single, "data.num_workers=0", *EXTRA), nproc=2))
    assert read_json(single / "summary.json")["ranks"][0]["node_address"] is None  # one node: no interface chosen
    assert_same_weights(run_dir, single)


def test_torchrun_on_two_nodes_gives_the_same_weights(slurm2, two_node_run, shapes_dir, tmp_path):
    run_dir = tmp_path / "torchrun"
    args = tiny_args(shapes_dir, run_dir, "data.num_workers=0", *EXTRA)
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--rdzv_backend", "c10d", "--rdzv_endpoint", "node1:29417", "--rdzv_id", "two-nodes"]
    env = {**slurm2, "PYTHONUNBUFFERED": "1"}
    agents = [subprocess.Popen(on_node(slurm2, node, *torchrun, "train.py", *args), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for node in (1, 2)]
    try:
        outputs = [agent.communicate(timeout=300)[0] for agent in agents]
    finally:  # nothing left running for the next test
        for agent in agents:
            agent.kill()
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    summary = read_json(run_dir / "summary.json")
    assert summary["launcher"] == "torchrun"
    assert_spans_both_nodes(summary, slurm2)
    assert_same_weights(run_dir, two_node_run[0])


def test_pipeline_on_two_nodes_finetunes_after_pretraining_from_its_weights(slurm2, shapes_dir, tmp_path):
    pipeline_dir = tmp_path / "pipeline"
    tiny = " ".join(o for o in overrides(shapes_dir, tmp_path, "train.epochs=1") if not o.startswith("run.dir="))
    job, rc = sbatch(slurm2, "slurm/pipeline.sh", CONFIG, CONFIG, options=(f"--output={tmp_path}/pipeline-%j.out",),
                     extra_env={"PIPELINE_DIR": str(pipeline_dir), "PRETRAIN_OVERRIDES": tiny,
                                "FINETUNE_OVERRIDES": tiny,
                                "SBATCH_ARGS": " ".join([*TWO_NODES, f"--output={tmp_path}/job-%j.out"])})
    out = (tmp_path / f"pipeline-{job}.out").read_text()
    assert rc == 0, out
    pretrain_job, finetune_job = [line.split("job ")[1].split()[0].rstrip(",") for line in out.splitlines()
                                  if ": job " in line]
    assert wait_for_state(slurm2, pretrain_job, ("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED"
    assert wait_for_state(slurm2, finetune_job, ("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED"
    pre = read_json(pipeline_dir / "pretrain" / "summary.json")
    fine = read_json(pipeline_dir / "finetune" / "summary.json")
    assert_spans_both_nodes(pre, slurm2)
    assert_spans_both_nodes(fine, slurm2)
    assert fine["init"]["init_from"] == str(pipeline_dir / "pretrain" / "weights.safetensors")
    first_event = read_jsonl(pipeline_dir / "finetune" / "metrics.jsonl")[0]["time"]
    assert first_event > (pipeline_dir / "pretrain" / "summary.json").stat().st_mtime


def wait_for_checkpoint(run_dir: Path, epoch: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not checkpoint_logged(run_dir, epoch=epoch):
        assert time.time() < deadline, f"no epoch-{epoch} checkpoint in {run_dir}"
        time.sleep(0.05)


def release_requeued(env: dict[str, str], job: str) -> None:
    """Wait for SLURM to requeue `job`, then let it start again without SLURM's two-minute hold."""
    deadline = time.time() + 120
    while job_field(env, job, "Restarts") in ("", "0") or job_field(env, job, "JobState") != "PENDING":
        assert time.time() < deadline, "the job was not requeued"
        time.sleep(0.2)
    time.sleep(3)  # not within the second of the requeue (slurmd refuses a credential from the same second)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)


def assert_one_stop_and_resume(run_dir: Path) -> None:
    """Both ranks stopped at one step with one checkpoint there, and the run resumed from it once."""
    events = read_jsonl(run_dir / "metrics.jsonl")
    (stop,) = [e for e in events if e["event"] == "preempted"]
    assert stop["signal"] == "SIGUSR1"
    before_stop = events[:events.index(stop)]  # a stop on an epoch's last step is followed by its end's checkpoint
    assert len([e for e in before_stop if e["event"] == "checkpoint" and e["step"] == stop["step"]]) == 1
    (resume,) = [e for e in events if e["event"] == "resume"]
    assert resume["step"] == stop["step"]


def test_usr1_on_two_nodes_stops_both_at_one_step_requeues_and_ends_bit_identical(slurm2, two_node_run, shapes_dir,
                                                                                  tmp_path):
    run_dir = tmp_path / "preempted"
    job, _ = sbatch(slurm2, "slurm/pretrain.sh", CONFIG, *overrides(shapes_dir, run_dir, *EXTRA),
                    options=(*TWO_NODES, f"--output={tmp_path}/slurm-%j.out"), wait=False)
    wait_for_checkpoint(run_dir, epoch=1)
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm2, check=True)  # the batch shell and both tasks
    release_requeued(slurm2, job)
    assert wait_for_state(slurm2, job, ("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED"
    assert_one_stop_and_resume(run_dir)
    assert_spans_both_nodes(read_json(run_dir / "summary.json"), slurm2)
    assert_identical_continuation(two_node_run[0], run_dir)


def training_processes_on(env: dict[str, str], node: int) -> list[int]:
    namespace = next(ns for name, ns, _ in cluster_nodes(env) if name == f"node{node}")
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            if b"train.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_a_node_lost_mid_run_fails_the_job_quickly_with_one_line_and_a_rerun_resumes(slurm2, two_node_run,
                                                                                      shapes_dir, tmp_path):
    run_dir = tmp_path / "lost"
    args = (CONFIG, *overrides(shapes_dir, run_dir, *EXTRA))
    job, _ = sbatch(slurm2, "slurm/pretrain.sh", *args, options=(*TWO_NODES, f"--output={tmp_path}/slurm-%j.out"),
                    wait=False)
    wait_for_checkpoint(run_dir, epoch=1)
    (victim,) = training_processes_on(slurm2, node=2)
    os.kill(victim, signal.SIGKILL)
    lost_at = time.time()
    assert wait_for_state(slurm2, job, ("COMPLETED", "FAILED", "CANCELLED"), timeout=120) == "FAILED"
    assert time.time() - lost_at < 60, "the surviving rank waited for the lost one"
    log = (run_dir / f"slurm-{job}.log").read_text()
    assert "error: lost contact with another process of this run" in log
    assert "resumes from its last checkpoint" in log
    assert "Traceback" not in log
    assert not (run_dir / "summary.json").exists()
    rerun, rc = sbatch(slurm2, "slurm/pretrain.sh", *args, options=(*TWO_NODES, f"--output={tmp_path}/slurm-%j.out"))
    assert rc == 0, (run_dir / f"slurm-{rerun}.log").read_text()[-3000:]
    assert "resuming from" in (run_dir / f"slurm-{rerun}.log").read_text()
    assert_identical_continuation(two_node_run[0], run_dir)


def test_submitit_on_two_nodes_forms_the_world_and_its_requeue_works(slurm2, two_node_run, shapes_dir, tmp_path):
    run_dir = tmp_path / "submitit"
    result = subprocess.run([PYTHON, "-m", "visiontrain", "launch", "submit", "-c", CONFIG,
                             *overrides(shapes_dir, run_dir, *EXTRA), "--cluster", "slurm", "--nodes", "2",
                             "--tasks-per-node", "1", "--cpus-per-task", "1", "--no-wait"],
                            cwd=ROOT, env=slurm2, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = [line.split(": job ")[1].split()[0].rstrip(",") for line in result.stdout.splitlines()
              if line.startswith("submitted ")]
    wait_for_checkpoint(run_dir, epoch=1)
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm2, check=True)
    release_requeued(slurm2, job)
    assert wait_for_state(slurm2, job, ("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED"
    assert_one_stop_and_resume(run_dir)
    assert_spans_both_nodes(read_json(run_dir / "summary.json"), slurm2)  # submitit sets torchrun's variables
    assert_identical_continuation(two_node_run[0], run_dir)


def test_a_second_cluster_on_the_same_port_or_subnet_is_refused_and_leaves_nothing(slurm2, tmp_path):
    subnet = cluster_nodes(slurm2)[0][2].rsplit(".", 1)[0]
    attempts = {"same-port": ({}, "bridge vtb17817 exists"),
                "same-subnet": ({"SLURM_TEST_PORT": "17819", "SLURM_TEST_SUBNET": subnet}, "is already routed")}
    for name, (env, message) in attempts.items():
        state = tmp_path / name
        result = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_cluster.sh"), "start", str(state), "--nodes",
                                 "2"], env={**slurm2, **env}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not list(state.glob("*.pid")) and not (state / "network").exists(), "the failed start left something"
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert "vtb17819" not in links and "vth178191" not in links
    sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=slurm2, capture_output=True, text=True)
    states = sinfo.stdout.split()
    assert len(states) == 2 and set(states) <= {"idle", "mix", "alloc", "comp"}, f"the running cluster: {states}"


def _running_trials_at_epoch(study: Path, epoch: int) -> dict[str, int] | None:
    """{worker id: trial number} of the RUNNING trials past their epoch-`epoch` checkpoint, once there are two."""
    from visiontrain.sweep.study import StudyDir

    found = {}
    for trial in StudyDir(study).open().get_trials():
        run_dir = study / "trials" / f"{trial.number:04d}"
        if trial.state.name == "RUNNING" and checkpoint_logged(run_dir, epoch=epoch):
            found[trial.user_attrs["worker"]] = trial.number
    return found if len(found) == 2 else None


def _wait_for(what, timeout: float = 240):
    deadline = time.time() + timeout
    while (found := what()) is None:
        assert time.time() < deadline, f"timed out waiting for {what.__name__}"
        time.sleep(0.05)
    return found


def test_a_sweep_of_two_array_workers_survives_a_killed_task_and_a_preempted_one(slurm2, shapes_dir, tmp_path):
    import yaml

    from visiontrain.sweep.study import StudyDir

    study = tmp_path / "study"
    # 20 short epochs: both workers are mid-trial for several seconds, when the test strikes
    fixed = [o for o in overrides(shapes_dir, tmp_path / "unused", *EXTRA, "train.epochs=20",
                                  "checkpoint.signal_check_steps=1") if not o.startswith("run.dir=")]
    spec = {"config": CONFIG, "overrides": fixed, "metric": "top1", "trials": 4,
            "sampler": {"name": "random", "seed": 3},
            "space": {"optim.lr": {"type": "float", "low": 0.05, "high": 0.4}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    ok(subprocess.run([PYTHON, "-m", "visiontrain", "sweep", "create", str(tmp_path / "spec.yaml"), "--study",
                       str(study)], cwd=ROOT, capture_output=True, text=True))
    one_node = ("--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--exclusive")
    job, _ = sbatch(slurm2, "slurm/sweep.sh", str(study), options=(*one_node, "--array=0-1",
                    f"--output={tmp_path}/slurm-%A_%a.out"), wait=False)

    # Both workers mid-trial. Under one, the node dies: its processes are killed and SLURM requeues the task (a
    # worker id is ARRAYJOB_TASK, which scontrol takes as the task's job id). The other is preempted (USR1 to its
    # batch shell, as #SBATCH --signal=B:USR1 sends it):
    # its trial checkpoints and the task requeues itself.
    (victim, killed), (other, preempted) = sorted(_wait_for(lambda: _running_trials_at_epoch(study, 1)).items())
    worker_pid = int((study / "leases" / f"{killed:04d}").read_text().split()[2])
    subprocess.run(["scancel", "--batch", "--signal=USR1", other], env=slurm2, check=True)  # as --signal=B:USR1
    kill_tree(worker_pid)
    for pid in _processes_training_in(study / "trials" / f"{killed:04d}"):
        kill_tree(pid)
    subprocess.run(["scontrol", "requeue", victim], env=slurm2, capture_output=True)
    release_requeued(slurm2, victim)
    release_requeued(slurm2, other)

    def finished():
        trials = StudyDir(study).open().get_trials()
        done = [t for t in trials if t.state.name != "RUNNING"]
        return trials if len(trials) == 4 and len(done) == 4 else None

    trials = _wait_for(finished, timeout=480)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4, [t.user_attrs for t in trials]
    assert {t.user_attrs["worker"] for t in trials} == {f"{job}_0", f"{job}_1"}
    hosts = {line.split(" on ")[1].split(",")[0] for task in (0, 1)
             for line in (tmp_path / f"slurm-{job}_{task}.out").read_text().splitlines() if "sweep worker" in line
             and " on " in line}
    assert hosts == {"node1", "node2"}  # one worker per node (--exclusive)
    for trial in trials:  # a trial started again only resumed: never from scratch
        run_dir = study / "trials" / f"{trial.number:04d}"
        starts = (run_dir / "trial.log").read_text().count("\n=== ")
        resumes = [e for e in read_jsonl(run_dir / "metrics.jsonl") if e["event"] == "resume"]
        assert starts == 1 + len(resumes), trial.number
    killed_dir = study / "trials" / f"{killed:04d}"
    assert (killed_dir / "trial.log").read_text().count("\n=== ") == 2
    other_log = (tmp_path / f"slurm-{job}_{other.split('_')[1]}.out").read_text()
    assert "USR1 received: passed to the sweep worker" in other_log and "requeueing job" in other_log
    preempted_dir = study / "trials" / f"{preempted:04d}"
    events = read_jsonl(preempted_dir / "metrics.jsonl")
    assert [e["signal"] for e in events if e["event"] == "preempted"] == ["SIGUSR1"]
    assert (preempted_dir / "trial.log").read_text().count("\n=== ") == 2
    # the killed trial ends with the weights of the same trial run without interruption
    from visiontrain.sweep.spec import read_spec

    (trial,) = [t for t in trials if t.number == killed]
    reference = tmp_path / "reference"
    ok(run_train(["-c", CONFIG, *read_spec(study / "spec.yaml").trial_overrides(trial.params, reference)],
                 env={"OMP_NUM_THREADS": slurm2["OMP_NUM_THREADS"]}))  # the trial's thread count: its numerics
    assert_same_weights(killed_dir, reference)


def _processes_training_in(run_dir: Path) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if f"run.dir={run_dir}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found
