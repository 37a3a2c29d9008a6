"""Classifiers behind one call: a normalized float32 NCHW batch -> float32 logits on the CPU.

- `TorchClassifier`: a trained PyTorch model, run as evaluation runs it (device, channels-last,
  the run's autocast precision);
- `OnnxClassifier`: an exported .onnx file through ONNX Runtime (CPU or CUDA provider).
`inputs` returns the normalizer that turns uint8 batches into what the classifier takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from visiontrain.data.base import DeviceNormalizer
from visiontrain.infra.errors import UsageError


class TorchClassifier:
    backend = "pytorch"

    def __init__(self, model: torch.nn.Module, device: torch.device, channels_last: bool, precision: str = "fp32"):
        from visiontrain.train.backends import autocast_factory

        self.device, self.channels_last = device, channels_last
        memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model = model.to(device, memory_format=memory_format).eval()
        self.autocast = autocast_factory(precision, device)
        self.static_batch = None
        self.device_name = device.type

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(images).float().cpu()


class OnnxClassifier:
    """`threads`: ONNX Runtime's intra-op threads (0: its default, one per physical core). It stands where
    evaluation takes a model: always in eval mode."""

    backend = "onnxruntime"
    training = False

    def __init__(self, path: Path, device: torch.device, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError(f"{path} needs ONNX Runtime: pip install 'visiontrain[deploy]'") from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UsageError("--device cuda but this ONNX Runtime has no CUDA provider (onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # its warnings about unused initializers are not the user's concern
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # ORT raises its own exception types for unreadable or invalid models
            raise UsageError(f"{path} is not a model ONNX Runtime can load ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
        self.device = torch.device("cpu")  # the session copies host inputs to its device itself
        self.device_name = "cuda" if device.type == "cuda" else "cpu"
        self.channels_last = False
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 2:
            raise UsageError(f"{path} is not an image classifier: expected one NCHW input and one (batch, classes) "
                             "output")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape
        self.num_classes = outputs[0].shape[1] if isinstance(outputs[0].shape[1], int) else None
        self.static_batch = self.input_shape[0] if isinstance(self.input_shape[0], int) else None

    def eval(self) -> OnnxClassifier:
        return self

    def train(self, mode: bool = True) -> OnnxClassifier:
        if mode:
            raise TypeError("an ONNX model cannot be put in training mode")
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        count = images.shape[0]
        array = images.float().contiguous().numpy()
        if self.static_batch and count < self.static_batch:  # pad a short last batch to the model's fixed size
            array = np.concatenate([array, np.repeat(array[-1:], self.static_batch - count, axis=0)])
        if self.static_batch and count > self.static_batch:
            return torch.cat([self(images[i : i + self.static_batch]) for i in range(0, count, self.static_batch)])
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0][:count]).float()


def inputs(mean: list[float], std: list[float], classifier: TorchClassifier | OnnxClassifier) -> DeviceNormalizer:
    return DeviceNormalizer(mean, std, classifier.device, classifier.channels_last)
