"""Post-training int8 quantization of an exported ONNX model with ONNX Runtime's quantizer, every choice stated.

- static (`--quantize int8`, the default mode): QDQ format (QuantizeLinear/DequantizeLinear pairs that ONNX
  Runtime fuses into integer kernels); weights int8, symmetric, per output channel or per tensor;
  activations uint8 with ranges calibrated on images: minmax (the observed range), entropy (the range that
  keeps the KL divergence of the histogram smallest) or percentile (99.999 % of the values).
- dynamic (`--quantize dynamic`): weights int8 ahead of time, activation ranges computed for each batch at
  run time; no calibration, for models whose calibrated ranges fail the gate. Its ConvInteger kernel takes
  uint8 weights only, so dynamic uses uint8 weights.

`reduce_range` (7-bit weights): ONNX Runtime's uint8 x int8 kernels on x86 CPUs without VNNI (AVX2, AVX-512F)
use VPMADDUBSW, whose 16-bit intermediate sums can saturate; 7-bit weights cannot saturate it, at some
precision. `auto` turns it on when the exporting CPU lacks VNNI (the deployment CPU may differ: say `on` or
`off` then). `quant_pre_process` (shape inference and ONNX Runtime's graph optimizations, which fold
BatchNorm into the convolutions) runs first, as ONNX Runtime's documentation asks.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from visiontrain.infra.errors import UsageError

log = logging.getLogger("visiontrain")

MODES = ("int8", "dynamic")
METHODS = ("minmax", "entropy", "percentile")
GRANULARITIES = ("channel", "tensor")
REDUCE_RANGE = ("auto", "on", "off")


@dataclass(frozen=True)
class QuantSettings:
    mode: str = "int8"  # int8 (static) | dynamic
    method: str = "minmax"  # static only
    weights: str = "channel"  # channel | tensor
    reduce_range: bool = False
    keep_float: tuple[str, ...] = ()

    def label(self) -> str:
        if self.mode == "dynamic":
            return f"dynamic, per-{self.weights} weights"
        return f"static {self.method}, per-{self.weights} weights"

    def as_dict(self) -> dict:
        found = asdict(self)
        found["keep_float"] = list(self.keep_float)
        if self.mode == "dynamic":
            found["method"] = None  # no calibration; ConvInteger's weights are per tensor whatever `weights` says
        found.update(format="QDQ" if self.mode == "int8" else "QOperator (dynamic)",
                     weight_type="uint8" if self.mode == "dynamic" else "int8",
                     activation_type="uint8")
        return found


def cpu_has_vnni() -> bool:
    """The CPU flags Linux reports (AVX-512 VNNI or AVX-VNNI); False where they cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def reduce_range_for(choice: str) -> bool:
    """`auto`: on for an x86 CPU without VNNI, where the saturation happens; off elsewhere (ARM has none)."""
    import platform

    if choice == "auto":
        return platform.machine().lower() in ("x86_64", "amd64", "i686") and not cpu_has_vnni()
    return choice == "on"


@dataclass
class Calibration:
    """The calibration images (normalized float32 NCHW batches) and where they came from."""

    batches: list[np.ndarray]
    source: str  # "train split of DATA" or the files given
    seed: int | None
    count: int = field(init=False)

    def __post_init__(self) -> None:
        self.count = sum(len(b) for b in self.batches)

    def describe(self, method: str | None) -> dict:
        return {"images": self.count, "source": self.source, "seed": self.seed, "method": method}


def _reader(input_name: str, batches: list[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        """The calibration images one at a time, once through: ONNX Runtime's histogram calibrators stack the
        outputs of all calls into one array, which fails for batches of different sizes."""

        def __init__(self) -> None:
            self.items = (image[None] for batch in batches for image in batch)

        def get_next(self):
            batch = next(self.items, None)
            return None if batch is None else {input_name: batch}

    return Batches()


def _quantizable_ops(mode: str) -> set[str]:
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

    return set(QDQRegistry if mode == "int8" else IntegerOpsRegistry)


def resolve_keep_float(model_path: Path, entries: Iterable[str], mode: str) -> tuple[list[str], list[str] | None]:
    """`--keep-float` entries -> (node names to exclude, op types to quantize or None for all). An entry is an
    op type (Conv, Gemm, MatMul, ...) or a node name of the prepared model; anything else is one line naming
    it and what the model has."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = [node.name for node in graph.node]
    ops = sorted({node.op_type for node in graph.node})
    nodes, kept_ops = [], set()
    for entry in entries:
        if entry in ops:
            kept_ops.add(entry)
        elif entry in names:
            nodes.append(entry)
        else:
            quantized = sorted(set(ops) & _quantizable_ops(mode))
            raise UsageError(f"--keep-float {entry!r} is neither an op type nor a node name of the model: its op "
                             f"types that quantize are {', '.join(quantized)}; node names look like "
                             f"{', '.join(repr(n) for n in names[:3])}")
    op_types = sorted(_quantizable_ops(mode) - kept_ops) if kept_ops else None
    return nodes, op_types


def head_nodes(model_path: Path) -> list[str]:
    """The nodes from the last matrix product (Gemm, MatMul or Conv) to the logits, which stay in float: 8-bit
    logits have 256 levels, and images whose top two classes fall on one level get their class by a tie."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    path, name = [], graph.output[0].name
    while name in producer:
        node = producer[name]
        path.append(node.name)
        if node.op_type in ("Gemm", "MatMul", "Conv"):
            return path
        computed = [i for i in node.input if i in producer and producer[i].op_type != "Constant"]
        if len(computed) != 1:
            break
        name = computed[0]
    return []


def prepare(fp32_path: Path, prepared_path: Path) -> None:
    """ONNX Runtime's pre-processing: symbolic shape inference, graph optimization (BatchNorm folded)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32_path), str(prepared_path), skip_symbolic_shape=False)
    except Exception as err:  # noqa: BLE001 - its symbolic pass fails on some exporter graphs (Reshape shapes)
        log.debug("quantize: symbolic shape inference failed (%s: %s); ONNX's shape inference alone",
                 type(err).__name__, err)
        quant_pre_process(str(fp32_path), str(prepared_path), skip_symbolic_shape=True)


def quantize(prepared_path: Path, out_path: Path, settings: QuantSettings, input_name: str,
             calibration: Calibration | None) -> list[str]:
    """Write the int8 model of the prepared fp32 model to `out_path`; the head's nodes it kept in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    nodes, op_types = resolve_keep_float(prepared_path, settings.keep_float, settings.mode)
    head = head_nodes(prepared_path)
    nodes += head
    per_channel = settings.weights == "channel"
    if settings.mode == "dynamic":
        quantize_dynamic(str(prepared_path), str(out_path), per_channel=per_channel,
                         reduce_range=settings.reduce_range, weight_type=QuantType.QUInt8,
                         nodes_to_exclude=nodes, op_types_to_quantize=op_types)
        return head
    if calibration is None or calibration.count == 0:
        raise UsageError("no calibration images: the training split selection or --calibration-images is empty")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.method]
    quantize_static(str(prepared_path), str(out_path), _reader(input_name, calibration.batches),
                    quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=settings.reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                    nodes_to_exclude=nodes, op_types_to_quantize=op_types,
                    # minmax folds its ranges every 32 images instead of keeping every activation to the end
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                   "CalibMaxIntermediateOutputs": 32})
    return head


def search_space(base: QuantSettings) -> list[QuantSettings]:
    """`--search`: every calibration method with per-channel and per-tensor weights (static), or both weight
    granularities (dynamic); the base settings first."""
    if base.mode == "dynamic":
        combos = [(base.method, w) for w in GRANULARITIES]
    else:
        combos = [(m, w) for w in GRANULARITIES for m in METHODS]
    first = (base.method, base.weights)
    ordered = [first] + [c for c in combos if c != first]
    return [QuantSettings(base.mode, m, w, base.reduce_range, base.keep_float) for m, w in ordered]
