"""uint8 -> normalized float32 on the CPU in one pass: `DeviceNormalizer`'s CPU path.

torch's `x.float().mul_(scale).add_(bias)` makes three passes over the float batch, broadcasts
the per-channel vectors slowly over the channel dimension of a channels-last tensor, and,
above all, writes a fresh batch-sized block (tens of MB) that glibc maps anew for every batch:
each 4 KiB page faults and is zeroed on first write. One 256 x 3 x 160 x 160 batch on the
2-core bench machine, one thread, per image: torch's formula 232 us; one fused pass into
torch.empty's memory 130 us; the same pass into numpy's memory 35 us; into memory written
before 20 us (docs/benchmarks.md, "Data-loader throughput").

Hence:
- one numba loop, `float32(x) * scale + bias` per element: the same two float32 roundings as
  torch's mul_ then add_ (no fast-math, so no fused multiply-add): the output equals torch's
  formula bit for bit. Rows are whole image rows (W x C values, the channel pattern repeated
  in the row vectors), so the loop is unit-stride and vectorizes.
- the output is a numpy array: numpy advises transparent huge pages for large arrays (Linux,
  default on; THP `madvise` mode is enough), so a batch faults in 2 MiB pages, not 4 KiB ones.
  Every call returns new memory: a batch the caller may still hold is never reused.
The loop runs in the calling thread and releases the GIL; no numba parallel region, since the
FFCV pipeline runs its own from another thread of the same process, and torch's intra-op
thread count (the model's) is left alone.
"""

from __future__ import annotations

import numpy as np
import torch

from visiontrain.data.jit import kernel


@kernel(nogil=True)
def normalize_rows(src, dst, scale, bias):
    """dst[r, k] = float32(src[r, k]) * scale[k] + bias[k] (2-D uint8 -> 2-D float32, row vectors)."""
    for r in range(src.shape[0]):
        for k in range(src.shape[1]):
            dst[r, k] = np.float32(src[r, k]) * scale[k] + bias[k]


@kernel(nogil=True)
def normalize_planes(src, dst, scale, bias):
    """dst[r, k] = float32(src[r, k]) * scale[r % C] + bias[r % C]: rows are channel planes of NCHW memory."""
    channels = scale.shape[0]
    for r in range(src.shape[0]):
        s, b = scale[r % channels], bias[r % channels]
        for k in range(src.shape[1]):
            dst[r, k] = np.float32(src[r, k]) * s + b


class CpuNormalizer:
    """uint8 NCHW CPU batch (any layout) -> new float32 batch, channels-last or contiguous: x * scale + bias."""

    def __init__(self, scale: torch.Tensor, bias: torch.Tensor, channels_last: bool):
        self.scale = scale.detach().cpu().reshape(-1).numpy().astype(np.float32)
        self.bias = bias.detach().cpu().reshape(-1).numpy().astype(np.float32)
        self.channels_last = channels_last
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def accepts(self, images: torch.Tensor) -> bool:
        return (images.device.type == "cpu" and images.dtype == torch.uint8 and images.dim() == 4
                and images.shape[1] == len(self.scale) and images.numel() > 0)

    def _row_vectors(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        if width not in self._rows:
            self._rows[width] = (np.tile(self.scale, width), np.tile(self.bias, width))
        return self._rows[width]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        if self.channels_last:
            src = images.permute(0, 2, 3, 1).contiguous().numpy()  # NHWC memory; no copy if already channels-last
            out = np.empty((n, h, w, c), dtype=np.float32)
            normalize_rows(src.reshape(n * h, w * c), out.reshape(n * h, w * c), *self._row_vectors(w))
            return torch.from_numpy(out).permute(0, 3, 1, 2)
        src = images.contiguous().numpy()
        out = np.empty((n, c, h, w), dtype=np.float32)
        normalize_planes(src.reshape(n * c, h * w), out.reshape(n * c, h * w), self.scale, self.bias)
        return torch.from_numpy(out)
