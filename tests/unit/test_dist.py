import io
import subprocess
from types import SimpleNamespace

import pytest

from visiontrain.infra.errors import UsageError, run_cli
from visiontrain.parallel import launchers, network
from visiontrain.parallel.launchers import detect_launch, export_torch_env, tasks_on_node
from visiontrain.parallel.network import choose_socket_interface


def test_single_process_without_launcher_variables():
    info = detect_launch({})
    assert (info.rank, info.world_size, info.launcher) == (0, 1, "single")


def test_torchrun_and_accelerate_variables():
    info = detect_launch({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (3, 8, 1, 2)
    assert info.launcher == "torchrun"


def test_srun_task_variables_become_torch_rendezvous_variables(monkeypatch):
    def scontrol(cmd, **kwargs):  # the head node's address, as SLURM would answer: no real scontrol
        out = "nodeA\n" if cmd[1:3] == ["show", "hostnames"] else "NodeName=nodeA\n   NodeAddr=10.1.2.3\n"
        return subprocess.CompletedProcess(cmd, 0, out, "")

    monkeypatch.setattr(launchers.subprocess, "run", scontrol)
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

    from visiontrain.parallel.network import free_port
    from visiontrain.parallel.runtime import shutdown

    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    assert torch_dist.is_initialized()
    shutdown()
    assert not torch_dist.is_initialized()
    shutdown()  # nothing to leave: a no-op


@pytest.mark.parametrize(("spec", "node", "tasks"), [("2", 0, 2), ("1(x2)", 1, 1), ("4(x2),2", 2, 2),
                                                     ("4(x2),2", 1, 4), ("3,1(x3)", 3, 1)])
def test_local_world_size_reads_slurms_compressed_tasks_per_node(spec, node, tasks):
    env = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "10", "SLURM_STEP_TASKS_PER_NODE": spec,
           "SLURM_NODEID": str(node)}
    assert detect_launch(env).local_world_size == tasks
    assert tasks_on_node(spec, node) == tasks


def test_tasks_per_node_that_cannot_be_read_is_an_error_not_a_guess():
    with pytest.raises(UsageError, match="2x3"):
        tasks_on_node("2x3", 0)
    with pytest.raises(UsageError, match="SLURM_NODEID=2"):
        tasks_on_node("1(x2)", 2)


def test_master_addr_is_the_head_nodes_slurm_address(monkeypatch):
    calls = []

    def scontrol(cmd, **kwargs):
        calls.append(cmd[1:3])
        node = "NodeName=nodeA Arch=x86_64\n   NodeAddr=10.1.2.3 NodeHostName=nodeA\n"
        out = "nodeA\nnodeB\n" if cmd[1:3] == ["show", "hostnames"] else node
        return subprocess.CompletedProcess(cmd, 0, stdout=out)

    monkeypatch.setattr(launchers.subprocess, "run", scontrol)
    env = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
           "SLURM_NODEID": "1", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node[A-B]"}
    export_torch_env(detect_launch(env), env)
    assert env["MASTER_ADDR"] == "10.1.2.3"
    assert calls == [["show", "hostnames"], ["show", "node"]]


def test_one_node_leaves_the_socket_interface_alone():
    env = {"MASTER_ADDR": "127.0.0.1"}
    one_node = detect_launch({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
    assert choose_socket_interface(one_node, env) is None
    assert "GLOO_SOCKET_IFNAME" not in env


def test_across_nodes_gloo_gets_the_interface_that_routes_to_the_head_node(monkeypatch):
    monkeypatch.setattr(network, "route_to", lambda host: ("10.0.0.12", "eth7"))
    env = {"MASTER_ADDR": "10.0.0.11"}
    across = detect_launch({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"})
    assert choose_socket_interface(across, env) == ("10.0.0.12", "eth7")
    assert env["GLOO_SOCKET_IFNAME"] == "eth7"


def test_on_the_head_node_a_loopback_master_addr_uses_the_outward_interface(monkeypatch):
    # MASTER_ADDR=node1 resolves to 127.0.1.1 on node1 itself (Debian's /etc/hosts)
    monkeypatch.setattr(network, "route_to", lambda host: ("127.0.0.1", "lo"))
    monkeypatch.setattr(network, "outward_interface", lambda: ("10.0.0.11", "eth7"))
    env = {"MASTER_ADDR": "node1"}
    head = detect_launch({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"})
    assert choose_socket_interface(head, env) == ("10.0.0.11", "eth7")
    assert env["GLOO_SOCKET_IFNAME"] == "eth7"


def test_an_interface_the_user_named_is_kept(monkeypatch):
    monkeypatch.setattr(network, "route_to", lambda host: pytest.fail("the named interface is used as is"))
    env = {"MASTER_ADDR": "10.0.0.11", "GLOO_SOCKET_IFNAME": "ib0"}
    across = detect_launch({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"})
    assert choose_socket_interface(across, env)[1] == "ib0"
    assert env["GLOO_SOCKET_IFNAME"] == "ib0"


def test_an_unresolvable_master_addr_is_one_line_naming_it():
    env = {"MASTER_ADDR": "no-such-host.invalid"}
    across = detect_launch({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"})
    with pytest.raises(UsageError, match="MASTER_ADDR='no-such-host.invalid' does not resolve"):
        choose_socket_interface(across, env)


def test_the_outward_interface_must_be_unambiguous(monkeypatch):
    import psutil

    up = SimpleNamespace(isup=True)
    monkeypatch.setattr(psutil, "net_if_stats", lambda: {"lo": up, "eth0": up, "eth1": up})
    monkeypatch.setattr(network, "ipv4_of", lambda name: {"eth0": "10.0.0.1", "eth1": "10.1.0.1"}.get(name, ""))
    monkeypatch.setattr(network, "open", lambda *a, **k: io.StringIO("Iface\tDestination\tGateway\n"), raising=False)
    with pytest.raises(UsageError, match="up: eth0, eth1.*GLOO_SOCKET_IFNAME"):
        network.outward_interface()
    routes = "Iface\tDestination\tGateway\neth1\t00000000\t0101000A\neth0\t0000000A\t00000000\n"
    monkeypatch.setattr(network, "open", lambda *a, **k: io.StringIO(routes), raising=False)
    assert network.outward_interface() == ("10.1.0.1", "eth1")


def test_a_lost_peer_is_one_line_naming_its_address(capsys):
    def collective(argv):
        raise RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [10.37.89.12]:44188: "
                           "Connection reset by peer. This is typically caused by a remote worker hanging")

    assert run_cli(collective, []) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "lost contact with another process of this run (at 10.37.89.12)" in err


def test_other_runtime_errors_keep_their_traceback(capsys):
    def broken(argv):
        raise RuntimeError("shape mismatch")

    assert run_cli(broken, []) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_broken_pipe_outside_communication_keeps_its_traceback(capsys):
    def writer(argv):
        raise RuntimeError("[Errno 32] Broken pipe while writing the report")

    assert run_cli(writer, []) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "lost contact" not in err


def test_an_address_no_interface_carries_is_one_line_asking_for_the_interface(monkeypatch):
    monkeypatch.setattr(network, "interface_of", lambda address: "")
    with pytest.raises(UsageError, match="cannot tell which network interface carries .*GLOO_SOCKET_IFNAME"):
        network.route_to("127.0.0.1")


def test_select_device_serves_the_config_and_a_command_line_option(monkeypatch):
    import torch

    from visiontrain.parallel.runtime import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == select_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(UsageError, match=r"^config key 'run.device' = 'cuda' but no CUDA device is visible; use auto"):
        select_device("cuda", 1)
    with pytest.raises(UsageError, match=r"^--device cuda but no CUDA device is visible; use auto or cpu$"):
        select_device("cuda", option="--device")
    with pytest.raises(UsageError, match=r"^--device 'gpu' is invalid: allowed auto, cpu, cuda$"):
        select_device("gpu", option="--device")
