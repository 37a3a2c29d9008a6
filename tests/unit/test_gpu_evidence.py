"""The GPU-evidence call: budgets within the deadline, parts stopped at their budget without losing the
others, every part reported, the bundle installer, and the recipe table's runs kept as they finish.
(The whole script in a fresh Python 3.12 venv: make gpu-rehearsal.)"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from visiontrain.bench import evidence, recipes
from visiontrain.bench.evidence_report import accuracy_check, summary
from visiontrain.infra.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def test_the_budgets_add_up_to_at_most_nine_minutes_with_the_installation():
    plan = evidence.parts()
    total = sum(p.budget_s for p in plan) + evidence.INSTALL_RESERVE_S
    assert total <= evidence.DEADLINE_S <= 540
    assert [p.name for p in plan][:3] == ["cifar_data", "fast", "resnet9"]
    assert evidence.GPU.fast_seeds >= 10 and evidence.GPU.resnet9_seeds >= 3
    with pytest.raises(UsageError, match="over the deadline 100 s"):
        evidence.check_budgets(plan, 100)


def _ctx(tmp_path: Path, deadline_s: float = 60, sizes: evidence.Sizes = evidence.GPU) -> evidence.Context:
    return evidence.Context(out=tmp_path / "out", work=tmp_path / "work", bundle=tmp_path, sizes=sizes,
                            rehearse=sizes is evidence.REHEARSAL, deadline=time.time() + deadline_s)


def _python(code: str):
    return lambda ctx: evidence.command(ctx, sys.executable, "-c", code)


def test_a_part_over_its_budget_is_killed_with_its_children_and_the_next_parts_still_run(tmp_path):
    marker = tmp_path / "child_alive"
    # The part's grandchild ignores SIGTERM (as a training process that treats it as preemption does) and would
    # write the marker after 6 s: only killing the whole group with SIGKILL stops it.
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(6)\n"
                          f"open({str(marker)!r}, 'w')\n")
    sleeper = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, {str(grandchild)!r}]); "
               "time.sleep(60)")
    plan = [evidence.Part("slow", "a slow part", 1, _python(sleeper), lambda ctx: {"partial": True}),
            evidence.Part("after_slow", "needs the slow one", 5, _python("print(1)"), needs=("slow",)),
            evidence.Part("fine", "an independent part", 10, _python("print('fine')")),
            evidence.Part("broken", "a failing part", 10, _python("import sys; print('error: bad'); sys.exit(3)")),
            evidence.Part("absent", "not in this version", 10, _python("print(1)"), available=lambda ctx: "no such"),
            evidence.Part("raises", "an unexpected error", 10, lambda ctx: {}["key"])]
    written = []
    start = time.time()
    records = evidence.run_parts(_ctx(tmp_path), plan, lambda rs: written.append([r.status for r in rs]))
    assert time.time() - start < 15
    assert [(r.name, r.status) for r in records] == [
        ("slow", "timed out"), ("after_slow", "not run"), ("fine", "ok"), ("broken", "failed"),
        ("absent", "missing"), ("raises", "failed")]
    assert records[0].result == {"partial": True} and 0.9 < records[0].seconds < 1 + evidence.KILL_GRACE_S + 2
    assert "needs slow" in records[1].reason and "exited with 3: error: bad" in records[3].reason
    assert records[5].reason == "KeyError: 'key'"
    # written after every part, the later parts still "not reached" at first
    assert written[0] == ["timed out"] + ["not reached"] * 5
    assert len(written) == len(plan)
    time.sleep(max(0.0, start + 6.5 - time.time()))
    assert not marker.exists(), "the killed part's grandchild survived"


def test_no_part_runs_into_the_deadline_and_one_left_too_little_time_is_not_started(tmp_path):
    plan = [evidence.Part("a", "first", 10, _python("import time; time.sleep(60)")),
            evidence.Part("b", "second", 10, _python("print(1)"))]
    start = time.time()
    records = evidence.run_parts(_ctx(tmp_path, deadline_s=8), plan, lambda rs: None)
    assert [r.status for r in records] == ["timed out", "not run"]
    assert time.time() - start < 8 and records[0].reason == "stopped at 5 s"  # the deadline less the kill's grace
    assert records[1].reason == "only 0 s left before the deadline"


def test_a_stopped_call_kills_the_running_part_and_records_the_rest(tmp_path):
    def stopped(ctx):
        raise evidence.CallStopped()
    plan = [evidence.Part("a", "first", 10, _python("print(1)")), evidence.Part("b", "second", 10, stopped),
            evidence.Part("c", "third", 10, _python("print(1)"))]
    written = []
    with pytest.raises(evidence.CallStopped):
        evidence.run_parts(_ctx(tmp_path), plan, lambda rs: written.append([(r.status, r.reason) for r in rs]))
    assert written[-1] == [("ok", ""), ("timed out", "the call was stopped"), ("not run", "the call was stopped")]


def test_a_part_starts_from_an_empty_folder_so_old_figures_are_never_reported(tmp_path):
    ctx = _ctx(tmp_path)
    (ctx.work / "p").mkdir(parents=True)
    (ctx.work / "p" / "results.json").write_text("{}")
    collect = lambda ctx: json.loads((ctx.work / "p" / "results.json").read_text())  # noqa: E731
    plan = [evidence.Part("p", "fails before writing", 10, _python("import sys; sys.exit(1)"), collect)]
    (record,) = evidence.run_parts(ctx, plan, lambda rs: None)
    assert record.status == "failed" and record.result is None and "could not be read" in record.reason


def _doc(parts: list[dict]) -> dict:
    return {"schema": 1, "mode": "gpu", "started_unix": 0, "deadline_s": 540,
            "environment": {"gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 1, "driver": "570.1", "torch": "2.11.0",
                            "cuda": "13.0", "python": "3.12.3", "cpu_count": 16},
            "parts": parts}


def _part(name: str, status: str = "ok", result=None, reason: str = "") -> dict:
    title = {p.name: p.title for p in evidence.parts()}[name]
    return {"name": name, "title": title, "budget_s": 10, "status": status, "seconds": 3.0, "reason": reason,
            "result": result}


def test_the_summary_names_every_part_and_what_a_stopped_part_finished():
    runs = [{"seed": s, "top1": t, "train_s": 3.0, "process_s": 9.0} for s, t in enumerate((89.5, 89.7, 89.6))]
    fast = {"label": "1 GPU, bf16", "seeds_asked": {"fast": 10}, "runs": {"fast": runs},
            "rows": [{**recipes.aggregate("fast", [{**r, "cores": 1.0, "epochs": 10, "model": "cifar_fast",
                                                     "world_size": 1, "samples": 5000, "train_samples": 45000}
                                                    for r in runs])}]}
    point = {"label": "model.compile=false", "world_size": 1, "images_per_s": 1000.0, "images_per_s_min": 990.0,
             "images_per_s_max": 1010.0, "images_per_s_per_device": 1000.0, "step_ms_p50": 1.0, "step_ms_p90": 1.1,
             "data_wait_fraction": 0.02, "peak_memory_mib": 100, "train_gflops_per_image": 12.3,
             "achieved_tflops_per_device": 12.3, "mfu": 0.1, "trainer_vs_bare": 0.985, "image_size": 160}
    parts = [_part("cifar_data"), _part("fast", "timed out", fast, "stopped at 150 s"),
             _part("resnet9", "failed", None, "exited with 1"), _part("trainer_eager", result={"points": [point]}),
             _part("trainer_compiled", "not reached"), _part("trainer_graphs", "not reached"),
             _part("r50_eager", result={"points": [point]}),
             _part("r50_compiled", "not reached"), _part("imagenet_data"),
             _part("ffcv_e2e", result={"points": [{**point, "images_per_s": 960.0}]}),
             _part("ffcv_step", result={"points": [point]}),
             _part("families", "missing", reason="timm is not installed")]
    text = summary(_doc(parts), {"fast": {"top1": [89.60], "setting": "CPU fp32"}})
    for part in parts:
        assert part["title"] in text
    assert "| timed out: stopped at 150 s | 3 | 10 |" in text
    assert "89.60 ± 0.10 % (3 seeds of 10 (timed out))" in text
    assert "| [resnet9](../configs/cifar10/resnet9.yaml) | | | | not measured (failed: exited with 1) | | |" in text
    assert "**0.960** of the step rate, data wait 2.0 %" in text
    assert "0.985" in text and "timm is not installed" in text
    assert "NVIDIA H100 80GB HBM3 x1, driver 570.1; torch 2.11.0, CUDA 13.0" in text


def test_the_accuracy_check_compares_with_the_cpu_seeds_spread():
    ref = {"fast": {"top1": [89.5, 89.7], "setting": "CPU fp32"}}  # std 0.141 -> tolerance 0.28
    near = [{"top1": 89.4}, {"top1": 89.5}]
    far = [{"top1": 88.9}, {"top1": 89.0}]
    assert "within twice the larger seed std (0.28)" in accuracy_check("fast", near, ref)
    assert "OUTSIDE" in accuracy_check("fast", far, ref)
    assert "no spread to judge by" in accuracy_check("fast", [{"top1": 89.0}], {"fast": {"top1": [89.6],
                                                                                            "setting": "x"}})
    assert "no CPU reference" in accuracy_check("resnet9", near, ref)


def test_outputs_are_three_small_files_with_each_part_log_cut_to_its_end(tmp_path):
    ctx = _ctx(tmp_path, sizes=evidence.REHEARSAL)
    ctx.out.mkdir()
    (ctx.work / "logs").mkdir(parents=True)
    (ctx.work / "logs" / "fast.log").write_text("".join(f"line {i}\n" for i in range(10_000)))
    records = [evidence.Record(p.name, p.title, p.budget_s) for p in evidence.parts()]
    records[1].status = "ok"
    evidence.write_outputs(ctx, records, {"gpu": None, "cpu_model": "x", "python": "3.12"}, time.time())
    assert sorted(p.name for p in ctx.out.iterdir()) == ["log.txt", "results.json", "summary.md"]
    log = (ctx.out / "log.txt").read_text()
    assert "line 9999" in log and f"line {9999 - evidence.LOG_TAIL_LINES}\n" not in log
    doc = json.loads((ctx.out / "results.json").read_text())
    assert [p["status"] for p in doc["parts"]][:3] == ["not reached", "ok", "not reached"]


def _wheel(folder: Path, name: str, module: str) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{module}/__init__.py", "VALUE = 42\n")
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    return path


def test_the_installer_adds_only_what_the_machine_lacks(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    _wheel(wheels, "vt_missing_pkg", "vt_missing_pkg")
    _wheel(wheels, "pytest", "pytest_shadow")  # the machine has pytest: never replaced
    done = subprocess.run([sys.executable, ROOT / "scripts" / "install_bundle.py", wheels, site],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (site / "vt_missing_pkg" / "__init__.py").is_file() and not (site / "pytest_shadow").exists()
    assert "pytest: the machine has" in done.stdout and "imports of ffcv, omegaconf" in done.stdout
    empty = subprocess.run([sys.executable, ROOT / "scripts" / "install_bundle.py", tmp_path / "none", site],
                           capture_output=True, text=True)
    assert empty.returncode == 2 and "holds no wheels" in empty.stderr


def test_the_bundle_refuses_missing_data_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, ROOT / "scripts" / "gpu_bundle.py", tmp_path / "b", "--shared", tmp_path],
                          capture_output=True, text=True)
    assert done.returncode == 2 and not (tmp_path / "b").exists()
    assert done.stderr.strip() == (f"gpu_bundle: --shared {tmp_path}: cifar10-train-jpeg.tar.gz not found (it must "
                                   "hold cifar10-train-jpeg.tar.gz, imagenet-sample-200.tar)")


def test_bench_evidence_refuses_a_bundle_without_data_in_one_line_before_writing(tmp_path, capsys):
    from visiontrain.bench.cli import main as bench_main
    from visiontrain.infra.errors import run_cli

    (tmp_path / "bundle" / "data").mkdir(parents=True)
    assert run_cli(bench_main, ["evidence", str(tmp_path / "out"), "--bundle", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data/cifar10-train-jpeg.tar.gz not found (build the bundle with make gpu-bundle)" \
        in err[0]
    assert not (tmp_path / "out").exists()


def test_the_evidence_script_refuses_a_missing_bundle_in_one_line(tmp_path):
    done = subprocess.run(["bash", ROOT / "scripts" / "gpu_evidence.sh", tmp_path / "out"], capture_output=True,
                          text=True, env={"GPU_BUNDLE": str(tmp_path / "nothing"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "wheels not found: build the bundle with make gpu-bundle" in done.stderr


def test_a_rehearsal_split_keeps_the_first_files_of_each_class(tmp_path):
    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for cls in ("cat", "dog"):
            for i in range(5):
                info = tarfile.TarInfo(f"train/{cls}/{i}.jpg")
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
    with tarfile.open(archive) as tar:
        names = [m.name for m in recipes._first_per_class(tar, 2)]
    assert names == ["train/cat/0.jpg", "train/cat/1.jpg", "train/dog/0.jpg", "train/dog/1.jpg"]


def test_the_recipe_table_is_written_after_every_run(tmp_path, monkeypatch):
    def fake_run(config, data, run_dir, seed, nproc, overrides):
        if seed == 2:
            raise KeyboardInterrupt  # stands for the kill at the part's budget
        return {"seed": seed, "top1": 90.0 + seed, "train_s": 1.0, "process_s": 2.0, "cores": 1.0, "epochs": 1,
                "model": "cifar_fast", "world_size": 1, "samples": 10, "train_samples": 90,
                "environment": {"device_type": "cpu", "cpu": "x", "cpu_count": 2, "packages": {}}}
    monkeypatch.setattr(recipes, "run_once", fake_run)
    monkeypatch.setattr("visiontrain.train.run.check", lambda *a, **k: "ok")
    from visiontrain.bench.cli import main as bench_main
    with pytest.raises(KeyboardInterrupt):
        bench_main(["recipes", "--data", str(tmp_path), "--configs", "fast", "--seeds", "fast=5", "--no-warmup",
                    "--out", str(tmp_path / "out")])
    doc = json.loads((tmp_path / "out" / "recipes.json").read_text())
    assert doc["complete"] is False and doc["seeds_asked"] == {"fast": 5}
    assert [r["top1"] for r in doc["runs"]["fast"]] == [90.0, 91.0] and doc["rows"][0]["runs"] == 2
    assert "environment" not in doc["runs"]["fast"][0]
