"""The real-time student: a causal window of feature frames -> the 52 blendshapes of its newest frame.

One forward pass per frame, made only of ops that XNNPACK runs in int8 (convolutions, fully
connected, ReLU, reshape): no normalisation layers, no softmax, no attention, no padding or
slicing. A full-integer TFLite model of it then runs as one XNNPACK partition on a Raspberry Pi.

Layout of the network (defaults in brackets; input ``(B, W, C)`` from ``imusic.modelio.assemble_input``):

- input clip: the normalised features are clamped to +-``input_clip`` [4] standard deviations
  (rare outliers; clipping at 4 cost 0.5% MAE on a model trained without it). The int8 model's
  input scale then spans +-4 instead of the outliers' +-24, four times finer.
- stem: a depthwise temporal convolution with kernel = stride = ``stem_stride`` [4] turns the W [48]
  frames into W/4 steps per channel (a learned filter per channel, W*C MACs), then a pointwise
  convolution C -> ``width`` [64] mixes the IMUs. The last step covers the newest 4 frames.
- body: ``len(dilations)`` [2] depthwise-separable causal blocks (depthwise kernel 3 with dilation
  d, then pointwise width -> width, ReLU). They use no padding: every block shortens the sequence
  by 2*d steps from the old end, which is what a causal receptive field needs and keeps the graph
  free of Pad/Slice ops.
- head: the remaining steps flattened -> ``head_hidden`` [128] -> 52, clamped to [0, 1] (as
  ReLU6 of 6x the value, then / 6: see ``forward``).

Training takes the loss on ``forward_raw`` (before the clamp, so saturated outputs still get a
gradient); ``forward`` is what is exported. ``macs()`` counts multiply-accumulates per frame.

Contract: ``Student(window_frames, channels, **arch)``; ``forward(x (B, W, C) float32) -> (B, 52)``
in [0, 1]; ``arch_dict()`` returns the keyword arguments that rebuild it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

N_OUT = 52
OUT_SCALE = 6.0  # the last layer outputs 6x the blendshapes (see forward)


class Student(nn.Module):
    def __init__(self, window_frames: int, channels: int, width: int = 64, stem_stride: int = 4,
                 dilations: tuple[int, ...] | list[int] = (1, 2), head_hidden: int = 128,
                 input_clip: float | None = 4.0) -> None:
        super().__init__()
        if window_frames % stem_stride:
            raise ValueError(f"window_frames {window_frames} is not a multiple of stem_stride {stem_stride}")
        steps = window_frames // stem_stride - sum(2 * d for d in dilations)
        if steps < 1:
            raise ValueError("the blocks' dilations leave no time steps: use fewer or smaller dilations")
        self.window_frames, self.channels, self.width = window_frames, channels, width
        self.stem_stride, self.dilations, self.head_hidden = stem_stride, tuple(int(d) for d in dilations), head_hidden
        self.steps_out = steps
        self.input_clip = None if input_clip is None else float(input_clip)
        self.stem = nn.Sequential(
            nn.Conv1d(channels, channels, kernel_size=stem_stride, stride=stem_stride, groups=channels),
            nn.Conv1d(channels, width, kernel_size=1), nn.ReLU())
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Conv1d(width, width, kernel_size=3, dilation=d, groups=width),
                          nn.Conv1d(width, width, kernel_size=1), nn.ReLU())
            for d in self.dilations])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * steps, head_hidden), nn.ReLU(),
                                  nn.Linear(head_hidden, N_OUT))
        # The temporal filters start as plain averages (stem) and pass-throughs of the newest tap
        # (blocks). With PyTorch's random init, most filters summed to near zero: high-passes that
        # hid the slow rel_rot levels most shapes are read from, and training did not recover them
        # (browInnerUp stayed at the constant predictor's error; measured on simulated data).
        with torch.no_grad():
            stem_dw = self.stem[0]
            assert isinstance(stem_dw, nn.Conv1d) and stem_dw.bias is not None
            stem_dw.weight.fill_(1.0 / stem_stride)
            stem_dw.bias.zero_()
            for block in self.blocks:
                assert isinstance(block, nn.Sequential)
                dw = block[0]
                assert isinstance(dw, nn.Conv1d) and dw.bias is not None
                dw.weight.zero_()
                dw.weight[:, :, -1] = 1.0
                dw.bias.zero_()

    def _head_out(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output: the blendshapes times ``OUT_SCALE``."""
        if self.input_clip is not None:
            # clamp to +-clip written with ReLU6, which XNNPACK runs in int8 (torch.clamp became
            # MINIMUM + MAXIMUM, which fell back to built-in kernels in a second partition)
            c = self.input_clip
            x = torch.nn.functional.relu6(x * (3.0 / c) + 3.0) * (c / 3.0) - c
        return self.head(self.blocks(self.stem(x.transpose(1, 2))))

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        """(B, W, C) -> (B, 52) before the clamp (the training loss is taken here)."""
        return self._head_out(x) * (1.0 / OUT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU6 of six times the value, then one sixth: the clamp to [0, 1] as an activation
        # TFLite fuses into the last fully connected layer, followed by one MUL. A plain clamp
        # became MINIMUM + RELU, which XNNPACK does not run in int8: they fell back to
        # built-in kernels and split the graph into two partitions (measured with imusic export).
        return torch.nn.functional.relu6(self._head_out(x)) * (1.0 / OUT_SCALE)

    def arch_dict(self) -> dict[str, Any]:
        return {"window_frames": self.window_frames, "channels": self.channels, "width": self.width,
                "stem_stride": self.stem_stride, "dilations": list(self.dilations), "head_hidden": self.head_hidden,
                "input_clip": self.input_clip}

    def macs(self) -> int:
        return count_macs(self, (1, self.window_frames, self.channels))


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of Conv1d and Linear layers (what dominates the
    student's cost; elementwise ops are left out), measured on a zero input of ``input_shape``."""
    total = 0

    def conv_hook(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv1d)
        k = int(m.kernel_size[0])
        total += int(out.numel() // out.shape[0]) * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Linear)
        total += int(out.numel() // out.shape[0]) * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
    return total
