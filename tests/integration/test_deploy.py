"""Deployment end to end on real CIFAR-10 JPEGs: a model trained on them, fine-tuned, exported to every
format and checked, and `predict` giving exactly the evaluation's predictions, with PyTorch and ONNX Runtime."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import PYTHON, ROOT, ok, read_json, run_train
from visiontrain.data.sources import FolderSource
from visiontrain.deploy import export as export_module
from visiontrain.deploy.evaluate import main as evaluate_main
from visiontrain.deploy.export import SUFFIXES, compare, load_exported
from visiontrain.deploy.export import main as export_main
from visiontrain.deploy.predict import main as predict_main
from visiontrain.deploy.trained import load_trained
from visiontrain.infra.errors import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deploy")]

FINETUNE_CLASSES = ["data.classes=[0,1,2,3,4]", "model.num_classes=5"]


def train_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["-c", "configs/demo/train.yaml", "data.loader=torchvision", f"data.path={data}", f"run.dir={run_dir}",
            "data.num_workers=0", "model.width=8", "train.batch_size=50", "schedule.warmup_epochs=1",
            "log.progress_bar=false", "log.tensorboard=false", "log.plots=false", *extra]


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def cifar_split(cifar_slice, tmp_path_factory) -> Path:
    """The shared CIFAR-10 slice as train/ (20 JPEGs per class) and val/ (10 per class) folders."""
    out = tmp_path_factory.mktemp("cifar_split")
    for path in sorted((cifar_slice / "train").glob("*/*.jpg")):
        split = "train" if int(path.stem) < 20 else "val"
        (out / split / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / split / path.parent.name / path.name)
    return out


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def cifar_run(cifar_split, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "cifar"
    ok(run_train(train_args(cifar_split, run_dir, "train.epochs=4")))
    return run_dir


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def finetuned_run(cifar_split, cifar_run, tmp_path_factory) -> Path:
    """The CIFAR run fine-tuned on 5 of its classes (a new head), with EMA weights."""
    run_dir = tmp_path_factory.mktemp("runs") / "finetuned"
    ok(run_train(train_args(cifar_split, run_dir, "train.epochs=2", f"finetune.init_from={cifar_run}",
                            "train.ema=true", *FINETUNE_CLASSES)))
    return run_dir


def cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_cli(main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_predictions(path: Path) -> dict[str, dict]:
    return {p["path"]: p for p in json.loads(path.read_text())["predictions"]}


def test_predict_gives_the_evaluation_predictions_with_pytorch_and_onnx(cifar_split, cifar_run, tmp_path, capsys):
    # The evaluation report the run wrote: one row per validation image, in the dataset's order.
    with open(cifar_run / "eval" / "predictions.csv") as f:
        evaluated = list(csv.DictReader(f))
    files = [path for path, _ in FolderSource(cifar_split / "val").samples]
    assert len(evaluated) == len(files) == 100
    expected = {files[int(row["index"])]: row for row in evaluated}

    code, out, err = cli(predict_main, ["--model", str(cifar_run), str(cifar_split / "val"), "--batch-size", "32",
                                        "--out", str(tmp_path / "torch.json")], capsys)
    assert code == 0, err
    assert re.search(r"predicted 100 images \(0 skipped\) in .* images/s .*pytorch on cpu, batch 32", out)
    ours = read_predictions(tmp_path / "torch.json")
    assert set(ours) == set(expected)
    assert all(ours[p]["top"][0]["class"] == expected[p]["predicted_name"] for p in ours)
    assert all(abs(ours[p]["top"][0]["probability"] - float(expected[p]["confidence"])) < 1e-5 for p in ours)
    accuracy = 100 * sum(ours[p]["top"][0]["class"] == Path(p).parent.name for p in ours) / len(ours)
    evaluation = read_json(cifar_run / "eval" / "eval.json")
    assert accuracy == pytest.approx(evaluation["top1"]) == pytest.approx(read_json(cifar_run / "summary.json")
                                                                          ["final"]["top1"])
    assert len({p["top"][0]["class"] for p in ours.values()}) >= 3  # a model that predicts, not a constant
    assert accuracy > 10  # above chance on 100 images of 10 classes (4 short epochs)

    # The ONNX export, through ONNX Runtime and the JSON contract alone: the same predictions.
    code, out, err = cli(export_main, [str(cifar_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                                       "--check-images", str(cifar_split / "val")], capsys)
    assert code == 0, err
    code, out, err = cli(predict_main, ["--model", str(tmp_path / "m.onnx"), str(cifar_split / "val"),
                                        "--batch-size", "32", "--out", str(tmp_path / "onnx.json")], capsys)
    assert code == 0 and "onnxruntime on cpu, batch 32" in out, err
    onnx = read_predictions(tmp_path / "onnx.json")
    assert [onnx[p]["top"][0]["class"] for p in files] == [ours[p]["top"][0]["class"] for p in files]
    assert max(abs(a["probability"] - b["probability"]) for p in files
               for a, b in zip(onnx[p]["top"], ours[p]["top"])) < 1e-5

    # The documented example: ONNX Runtime, PIL, numpy and the JSON file, nothing of this package.
    page = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    example = re.search(r"## Using the model without visiontrain.*?```python\n(.*?)```", page, re.DOTALL).group(1)
    image = files[37]
    run = subprocess.run([PYTHON, "-c", example.replace("model.onnx", str(tmp_path / "m.onnx"))
                          .replace("cat.jpg", str(image))], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0] == ours[image]["top"][0]["class"]

    # Test-time augmentation: predict --tta flip_translate gives evaluate --tta flip_translate's predictions,
    # with PyTorch and with the ONNX model.
    code, out, err = cli(evaluate_main, ["--weights", str(cifar_run), "--tta", "flip_translate",
                                         "--out", str(tmp_path / "eval_tta")], capsys)
    assert code == 0, err
    with open(tmp_path / "eval_tta" / "predictions.csv") as f:
        evaluated_tta = {files[int(row["index"])]: row for row in csv.DictReader(f)}
    for model, name in ((cifar_run, "torch_tta"), (tmp_path / "m.onnx", "onnx_tta")):
        code, out, err = cli(predict_main, ["--model", str(model), str(cifar_split / "val"), "--batch-size", "32",
                                            "--tta", "flip_translate", "--out", str(tmp_path / f"{name}.json")], capsys)
        assert code == 0 and "tta flip_translate" in out, err
        tta = read_predictions(tmp_path / f"{name}.json")
        assert all(abs(tta[p]["top"][0]["probability"] - float(evaluated_tta[p]["confidence"])) < 1e-5 for p in files)
    assert any(abs(tta[p]["top"][0]["probability"] - ours[p]["top"][0]["probability"]) > 1e-3 for p in files)


def test_fine_tuned_run_exports_to_every_format_with_its_contract(cifar_split, finetuned_run, tmp_path):
    summary = read_json(finetuned_run / "summary.json")
    trained = load_trained(finetuned_run)
    images = trained.images_from_files([str(cifar_split / "val")], 16)
    for fmt, suffix in SUFFIXES.items():
        out = tmp_path / f"model{suffix}"
        result = subprocess.run([PYTHON, "-m", "visiontrain", "export", str(finetuned_run), "--format", fmt, "--out",
                                 str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        contract = json.loads(out.with_name(out.name + ".json").read_text())
        assert contract["class_names"] == ["airplane", "automobile", "bird", "cat", "deer"]
        assert contract["training_run"]["val_top1"] == summary["final"]["top1"]
        assert contract["input"]["image_size"] == 32 and contract["input"]["mean"] == [0.5, 0.5, 0.5]
        assert contract["onnx_opset"] == (18 if fmt == "onnx" else None)
        assert contract["export_check"]["images"] == 32 and contract["export_check"]["max_rel_diff"] <= 1e-4
        check = compare(trained.model, load_exported(out, fmt), [images[:1], images[1:8]])
        print(f"\nfine-tuned resnet9 {fmt}: max |diff| {check.max_abs_diff:.3g}, relative {check.max_rel_diff:.3g}")
        assert check.max_rel_diff <= 1e-4 and check.top1_agree == 8
    ema = subprocess.run([PYTHON, "-m", "visiontrain", "export", str(finetuned_run), "--format", "onnx", "--ema"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ema.returncode == 0, ema.stderr[-3000:]
    contract = json.loads((finetuned_run / "export" / "model_ema.onnx.json").read_text())
    assert contract["model"]["ema"] and contract["training_run"]["val_top1"] == summary["final_ema"]["top1"]


def test_a_failed_check_keeps_nothing_and_exits_1(cifar_run, cifar_split, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(export_module.TOLERANCE, "fp32", 0.0)  # ONNX Runtime's float32 sums differ in the last bits
    out = tmp_path / "m.onnx"
    code, _, err = cli(export_main, [str(cifar_run), "--format", "onnx", "--out", str(out)], capsys)
    assert code == 1 and "disagrees with PyTorch" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def one_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_end_with_one_line_exit_2_and_nothing_written(cifar_run, cifar_split, tmp_path, capsys):
    assert cli(export_main, [str(cifar_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                             "--check-count", "4"], capsys)[0] == 0
    out = tmp_path / "predictions.csv"
    text_jpg = tmp_path / "notes.jpg"
    text_jpg.write_text("not an image\n")
    cat = str(cifar_split / "val" / "cat" / "0020.jpg")
    three = tmp_path / "three.onnx"
    shutil.copy(tmp_path / "m.onnx", three)
    contract = json.loads((tmp_path / "m.onnx.json").read_text())
    (tmp_path / "three.onnx.json").write_text(json.dumps({**contract, "class_names": ["a", "b", "c"]}))
    cases = [
        (predict_main, ["--model", str(cifar_run), str(tmp_path / "missing.jpg")], "missing.jpg does not exist"),
        (predict_main, ["--model", str(cifar_run), str(text_jpg), cat, "--strict"], "notes.jpg cannot be read"),
        (predict_main, ["--model", str(cifar_run), str(text_jpg)], "none of the 1 files is a readable image"),
        (predict_main, ["--model", str(three), cat], "has 10 outputs but its input contract names 3 classes"),
        (predict_main, ["--model", str(tmp_path / "m.pt2"), cat], "torch.export files are not loaded"),
        (export_main, [str(cifar_run), "--format", "tflite", "--out", str(tmp_path / "m.tflite")],
         "invalid choice: 'tflite'"),
        (export_main, [str(cifar_run), "--format", "onnx", "--ema", "--out", str(tmp_path / "e.onnx")],
         "has no EMA weights"),
        (export_main, [str(cifar_run), "--format", "onnx", "--out", str(text_jpg / "m.onnx")],
         "notes.jpg: it is a file where a directory is needed"),
    ]
    for main, argv, expected in cases:
        code, _, err = cli(main, [*argv, "--out", str(out)] if main is predict_main else argv, capsys)
        assert expected in one_line(code, err), (argv, err)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json", "notes.jpg", "three.onnx",
                                                         "three.onnx.json"]

    # Without --strict an unreadable file is listed and skipped; the others are predicted.
    code, stdout, err = cli(predict_main, ["--model", str(cifar_run), str(text_jpg), cat, "--out", str(out)], capsys)
    assert code == 0 and f"skipped {text_jpg}: image {text_jpg} cannot be read" in err
    assert "predicted 1 images (1 skipped)" in stdout
    rows = list(csv.reader(out.open()))
    assert rows[0][:3] == ["path", "class_1", "probability_1"] and len(rows[0]) == 11 and rows[1][0] == cat
    assert sum(float(v) for v in rows[1][2::2]) <= 1.0 + 1e-6
    torch.testing.assert_close(float(rows[1][2]), max(float(v) for v in rows[1][2::2]))

    # --topk above the class count lists every class and says so.
    code, _, err = cli(predict_main, ["--model", str(cifar_run), cat, "--topk", "20", "--out", str(out)], capsys)
    assert code == 0 and "--topk 20: the model has 10 classes; all 10 are listed" in err
    assert len(next(csv.reader(out.open()))) == 21  # path + 10 x (class, probability)

    # Overrides after the options, as train.py takes them.
    code, _, err = cli(export_main, [str(cifar_run), "--format", "onnx", "--out", str(tmp_path / "late.onnx"),
                                     "--check-count", "4", "data.val_image_size=32"], capsys)
    assert code == 0, err
    (tmp_path / "late.onnx").unlink()
    (tmp_path / "late.onnx.json").unlink()

    # The subprocess entry point: exit code 2 and a single stderr line.
    bad = subprocess.run([PYTHON, "-m", "visiontrain", "predict", "--model", str(cifar_run), str(tmp_path / "nope")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "nope does not exist" in one_line(bad.returncode, bad.stderr)


def test_a_fixed_batch_larger_than_the_check_images_is_the_exported_input_size(cifar_run, cifar_split, tmp_path,
                                                                                capsys):
    import onnx

    photos = sorted((cifar_split / "val").rglob("*.jpg"))[:3]
    out = tmp_path / "fixed.onnx"
    code, _, err = cli(export_main, [str(cifar_run), "--format", "onnx", "--out", str(out), "--batch-size", "8",
                                     "--check-images", *map(str, photos)], capsys)
    assert code == 0, err
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][0] == 8
    assert json.loads(out.with_name(out.name + ".json").read_text())["input"]["shape"][0] == 8


# ------------------------------------------------------------------ int8
def test_int8_export_passes_the_gate_predicts_as_fp32_and_evaluates_to_its_recorded_top1(cifar_run, cifar_split,
                                                                                         tmp_path, capsys):
    """Static int8 calibrated on 100 of the run's training images (10 per class): within --max-drop of fp32 on
    the validation split, the same class as the fp32 export on >= 98 % of all 300 real images, a smaller file;
    `evaluate` on the .onnx gives the top-1 the contract recorded, `predict --threads 1` runs it."""
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model_int8.onnx"
    assert cli(export_main, [str(cifar_run), "--format", "onnx", "--out", str(fp32)], capsys)[0] == 0
    code, out, err = cli(export_main, [str(cifar_run), "--format", "onnx", "--quantize", "int8", "--calibration",
                                       "100", "--out", str(int8)], capsys)
    assert code == 0, err
    assert re.search(r"gate: static minmax, per-channel weights: top-1 [\d.]+% \(fp32 [\d.]+%, drop", out)
    contract = read_json(int8.with_name(int8.name + ".json"))
    q, gate = contract["quantization"], contract["accuracy_gate"]
    assert contract["precision"] == "int8" and q["mode"] == "int8" and q["format"] == "QDQ"
    assert q["calibration"] == {"images": 100, "source": f"train split of {cifar_split}", "seed": 0,
                                "method": "minmax"}
    assert gate["images"] == 100 and gate["drop"] <= 1.0 and gate["fp32_top1"] == pytest.approx(
        read_json(cifar_run / "summary.json")["final"]["top1"], abs=0.01)
    assert contract["file_bytes"] == int8.stat().st_size and contract["fp32_file_bytes"] > 2.5 * contract["file_bytes"]
    assert contract["latency"]["int8_p50_ms"] > 0 and contract["export_check"]["max_rel_diff"] <= 1e-4

    preds = {}
    for model in (fp32, int8):
        result = tmp_path / f"{model.stem}.json"
        code, _, err = cli(predict_main, ["--model", str(model), str(cifar_split), "--threads", "1", "--out",
                                          str(result)], capsys)
        assert code == 0, err
        preds[model.stem] = {path: p["top"][0]["class"] for path, p in read_predictions(result).items()}
    same = sum(preds["model"][path] == preds["model_int8"][path] for path in preds["model"])
    assert len(preds["model"]) == 300 and same >= 0.98 * 300, same

    code, out, err = cli(evaluate_main, ["--weights", str(int8), "--out", str(tmp_path / "eval")], capsys)
    assert code == 0, err
    assert read_json(tmp_path / "eval" / "eval.json")["top1"] == pytest.approx(gate["int8_top1"], abs=0.01)


def test_a_constant_calibration_image_fails_the_gate_with_exit_1_and_nothing_written(cifar_run, tmp_path, capsys):
    from PIL import Image

    gray = tmp_path / "gray.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(gray)
    out = tmp_path / "out" / "deeper" / "bad.onnx"  # folders the export makes, and removes when it fails
    code, stdout, err = cli(export_main, [str(cifar_run), "--format", "onnx", "--quantize", "int8",
                                          "--calibration-images", str(gray), "--out", str(out)], capsys)
    assert code == 1 and "no int8 model passes the accuracy gate" in err and "Traceback" not in err
    assert re.search(r"drop (\d+\.\d+) points", stdout) and float(re.search(r"drop (\d+\.\d+)", stdout)[1]) > 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gray.png"]


def test_search_keep_float_and_dynamic_are_recorded_in_the_contract(cifar_run, tmp_path, capsys):
    import onnx

    searched = tmp_path / "searched.onnx"
    code, out, err = cli(export_main, [str(cifar_run), "--format", "onnx", "--quantize", "int8", "--search",
                                       "--calibration", "50", "--gate-images", "60", "--out", str(searched)], capsys)
    assert code == 0, err
    q = read_json(tmp_path / "searched.onnx.json")["quantization"]
    tried = {(row["method"], row["weights"]) for row in q["search"]}
    assert tried == {(m, w) for m in ("minmax", "entropy", "percentile") for w in ("channel", "tensor")}
    best = max(row["top1"] for row in q["search"])
    assert (q["method"], q["weights"]) in {(r["method"], r["weights"]) for r in q["search"] if r["top1"] == best}
    assert out.count("gate: ") == 6 and read_json(tmp_path / "searched.onnx.json")["accuracy_gate"]["images"] == 60

    # Conv kept in float: no convolution reads a dequantized weight; the classifier head is float anyway.
    kept = tmp_path / "kept.onnx"
    code, _, err = cli(export_main, [str(cifar_run), "--format", "onnx", "--quantize", "int8", "--keep-float", "Conv",
                                     "--calibration", "20", "--out", str(kept)], capsys)
    assert code == 0, err
    graph = onnx.load(str(kept)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert not any(n.op_type == "Conv" and n.input[1] in dequantized for n in graph.node)
    head = [n for n in graph.node if n.op_type == "Gemm"]
    assert head and all(n.input[1] not in dequantized for n in head)
    assert read_json(tmp_path / "kept.onnx.json")["quantization"]["keep_float"] == ["Conv"]

    dynamic = tmp_path / "dynamic.onnx"
    code, _, err = cli(export_main, [str(cifar_run), "--format", "onnx", "--quantize", "dynamic", "--out",
                                     str(dynamic)], capsys)
    assert code == 0, err
    contract = read_json(tmp_path / "dynamic.onnx.json")
    assert contract["quantization"]["mode"] == "dynamic" and contract["quantization"]["calibration"] is None
    assert any(n.op_type == "ConvInteger" for n in onnx.load(str(dynamic)).graph.node)


@pytest.mark.parametrize("argv, expected", [
    (["--quantize", "int8", "--calibration-method", "kl"], "invalid choice: 'kl'"),
    (["--quantize", "int8", "--calibration", "0"], "--calibration 0 is invalid"),
    (["--quantize", "int8", "--max-drop", "-1"], "--max-drop -1 is invalid"),
    (["--quantize", "int8", "--format", "torchscript"], "it needs --format onnx --precision fp32"),
    (["--quantize", "int8", "--precision", "fp16"], "it needs --format onnx --precision fp32"),
    (["--calibration-method", "entropy"], "add --quantize int8"),
    (["--quantize", "dynamic", "--calibration-method", "entropy"], "--calibration-method applies to --quantize int8"),
    (["--quantize", "int8", "--keep-float", "NoSuchOp"], "--keep-float 'NoSuchOp' is neither an op type"),
    (["--quantize", "int8", "--batch-size", "8"], "export it with a dynamic batch"),
    (["--quantize", "int8", "--calibration-seed", "-1"], "--calibration-seed -1 is invalid"),
    (["--max-drop", "0.5"], "--max-drop applies to an int8 export"),
    (["--quantize", "dynamic", "--calibration", "64"], "--calibration applies to --quantize int8"),
])
def test_bad_int8_flags_are_one_line_exit_2_and_nothing_written(cifar_run, tmp_path, capsys, argv, expected):
    out = tmp_path / "m.onnx"
    fmt = [] if "--format" in argv else ["--format", "onnx"]
    code, _, err = cli(export_main, [str(cifar_run), *fmt, *argv, "--out", str(out)], capsys)
    assert expected in one_line(code, err)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_keep_float_is_one_line_even_after_another_command_logged_at_info(cifar_run, tmp_path, capsys):
    # In one process (a notebook, these tests) an earlier command may have set the root logger to INFO with a
    # handler on stderr: the ONNX optimizer's INFO lines and the calibration line must still not appear.
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    root.handlers[:] = [logging.StreamHandler(sys.stderr)]
    root.setLevel(logging.INFO)
    try:
        code, _, err = cli(export_main, [str(cifar_run), "--format", "onnx", "--quantize", "int8", "--keep-float",
                                         "NoSuchOp", "--out", str(tmp_path / "m.onnx")], capsys)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    assert "--keep-float 'NoSuchOp' is neither an op type" in one_line(code, err)
    assert list(tmp_path.iterdir()) == []


def test_bench_deploy_times_every_export_and_pytorch_side_by_side(cifar_run, tmp_path, capsys):
    from visiontrain.bench.cli import main as bench_main

    export = tmp_path / "export"
    for extra in ([], ["--quantize", "int8", "--calibration", "20"]):
        name = "model_int8.onnx" if extra else "model.onnx"
        assert cli(export_main, [str(cifar_run), "--format", "onnx", *extra, "--out", str(export / name)],
                   capsys)[0] == 0
    code, out, err = cli(bench_main, ["deploy", str(cifar_run), "--onnx", str(export / "model.onnx"),
                                      str(export / "model_int8.onnx"), "--threads", "1", "--rounds", "1", "--runs",
                                      "3", "--batches", "1", "--batch", "8", "--out", str(tmp_path / "bench")],
                         capsys)
    assert code == 0, err
    doc = read_json(tmp_path / "bench" / "results.json")
    assert [(r["model"], r["kind"], r["threads"]) for r in doc["rows"]] == [
        ("model.onnx", "onnxruntime fp32", 1), ("model_int8.onnx", "onnxruntime int8", 1),
        ("pytorch eager", "pytorch fp32", 1)]
    assert all(r["batch1_p90_ms"] >= r["batch1_p50_ms"] > 0 and r["batch8_images_per_s"] > 0 for r in doc["rows"])
    assert doc["top1"]["images"] == 100 and doc["top1"]["model.onnx"] == doc["top1"]["pytorch eager"]
    assert doc["rows"][1]["file_mb"] < doc["rows"][0]["file_mb"] and "cpu" in doc["environment"]
    assert (tmp_path / "bench" / "deploy.png").stat().st_size > 0 and "| model.onnx |" in out


def test_evaluating_an_onnx_file_refuses_settings_its_contract_contradicts(cifar_run, cifar_split, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    assert cli(export_main, [str(cifar_run), "--format", "onnx", "--out", str(model), "--check-count", "4"],
               capsys)[0] == 0
    renamed = tmp_path / "renamed"  # ten classes, but not the same ten
    shutil.copytree(cifar_split, renamed)
    for split in ("train", "val"):
        (renamed / split / "airplane").rename(renamed / split / "zebra")
    cases = [
        (["data.mean=[0.1,0.1,0.1]"], "input contract says data.mean=[0.5, 0.5, 0.5]"),
        (["--data", str(renamed)], "classifies 10 classes (airplane, automobile, bird, ...); the dataset at"),
        (["--ema"], "is an exported model"),
    ]
    for extra, expected in cases:
        code, _, err = cli(evaluate_main, ["--weights", str(model), "--out", str(tmp_path / "eval"), *extra], capsys)
        assert expected in one_line(code, err), (extra, err)
        assert not (tmp_path / "eval").exists()
    code, out, err = cli(evaluate_main, ["--weights", str(model), "--out", str(tmp_path / "eval")], capsys)
    assert code == 0, err
    assert read_json(tmp_path / "eval" / "eval.json")["top1"] == pytest.approx(
        read_json(cifar_run / "summary.json")["final"]["top1"], abs=0.01)
