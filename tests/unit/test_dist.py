
from visiontrain.dist import detect_launch, export_torch_env


def test_single_process_without_launcher_variables():
    info = detect_launch({})
    assert (info.rank, info.world_size, info.launcher) == (0, 1, "single")


def test_torchrun_and_accelerate_variables():
    info = detect_launch({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (3, 8, 1, 2)
    assert info.launcher == "torchrun"


def test_srun_task_variables_become_torch_rendezvous_variables():
    env = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1",
           "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "nodeA"}
    info = detect_launch(env)
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (1, 4, 1, "slurm")
    export_torch_env(info, env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("1", "4", "1")
    assert env["MASTER_PORT"] == str(20000 + 1234) and env["MASTER_ADDR"]


def test_the_sbatch_shell_is_not_mistaken_for_a_task():
    # The batch script has SLURM_PROCID but no step task count: one process, not a world of 4.
    info = detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "5"})
    assert info.world_size == 1 and info.launcher == "single"


def test_shutdown_leaves_the_process_group_so_exit_does_not_tear_gloo_down():
    import torch.distributed as torch_dist

    from visiontrain.dist import _free_port, shutdown

    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    assert torch_dist.is_initialized()
    shutdown()
    assert not torch_dist.is_initialized()
    shutdown()  # nothing to leave: a no-op
