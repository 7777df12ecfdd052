"""The PyTorch peer: the paper's U-Net as a competent PyTorch user would write and run it on a CPU.

The same layers as ``kunet.model.UNet(padding="valid", batch_norm=False)``: per level two unpadded 3x3
convolutions with ReLU, 2x2 max-pooling, dropout 0.5 at the end of the contracting path, 2x2 transposed
convolutions (stride 2) halving the channels, crop-and-concatenate ``[skip, upsampled]``, a final 1x1
convolution; 31,030,658 parameters at base 64. Every function works without PyTorch installed:
:func:`version` then returns None and the benchmarks print "PyTorch: not installed".

Used by ``benchmarks/inference.py`` and the training-step benchmark; keep these names and signatures.
"""

from __future__ import annotations

import os

import numpy as np
from timing import median_ms

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except (ImportError, OSError):  # not installed, or a wheel whose CUDA libraries are missing (see README)
    torch = F = nn = None

# Channels-last (NHWC) weights and activations: on the 2-core AMD EPYC (AVX2) this was developed on, one
# 380 tile ran faster than in the default NCHW layout in both precisions (float32 about 1.6x, emulated bf16
# about 8x; a busy machine, so only the direction is sure). Set to False to time NCHW.
CHANNELS_LAST = True


def version() -> str | None:
    """PyTorch's version, or None when it cannot be imported."""
    return None if torch is None else torch.__version__


class _UNet(nn.Module if nn is not None else object):
    def __init__(self, base_filters: int, depth: int, in_channels: int, num_classes: int):
        super().__init__()

        def block(inputs, filters):
            return nn.Sequential(nn.Conv2d(inputs, filters, 3), nn.ReLU(inplace=True),
                                 nn.Conv2d(filters, filters, 3), nn.ReLU(inplace=True))  # fmt: skip

        widths = [base_filters * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList(block(c_in, c) for c_in, c in zip([in_channels] + widths[:-1], widths))
        self.dropout = nn.Dropout(0.5)
        self.upconv = nn.ModuleList(nn.ConvTranspose2d(2 * c, c, 2, stride=2) for c in widths[:-1])
        self.up = nn.ModuleList(block(2 * c, c) for c in widths[:-1])
        self.classifier = nn.Conv2d(base_filters, num_classes, 1)
        for module in self.modules():  # the paper's Gaussian init, std sqrt(2 / fan-in)
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x):
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level < len(self.upconv):
                skips.append(x)
                x = F.max_pool2d(x, 2)
        x = self.dropout(x)
        for level in reversed(range(len(self.upconv))):
            x = self.upconv[level](x)
            skip = skips[level]
            crop = (skip.shape[-1] - x.shape[-1]) // 2
            x = torch.cat([skip[..., crop : crop + x.shape[-2], crop : crop + x.shape[-1]], x], dim=1)
            x = self.up[level](x)
        return self.classifier(x)


def unet(base_filters: int = 64, depth: int = 4, in_channels: int = 1, num_classes: int = 2):
    """The paper's valid-padding U-Net as a ``torch.nn.Module`` returning logits [B, K, H - 184, W - 184]."""
    torch.manual_seed(0)
    return _UNet(base_filters, depth, in_channels, num_classes)


def _setup(threads: int | None):
    torch.set_num_threads(threads or os.cpu_count())


def _autocast(precision: str):
    """bf16 through autocast (convolutions in bf16, reductions in float32), or nothing for float32."""
    if precision == "float32":
        return torch.autocast("cpu", enabled=False)
    if precision in ("bf16", "bfloat16", "mixed_bfloat16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'float32' or 'bf16', got {precision!r}")


def _median_seconds(function, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    return median_ms(function, repeats) / 1000


def predict(model, image: np.ndarray, precision: str = "float32", tile: int = 572) -> np.ndarray:
    """Probabilities [H, W, K] of a 2-D image: standardise, mirror-pad, 572 -> 388 tiles in one batch, stitch."""
    height, width = image.shape
    out = tile - 184
    rows, cols = -(-height // out), -(-width // out)
    unit = image.astype(np.float32) / 255.0
    unit = (unit - unit.mean()) / max(float(unit.std()), 1e-6)
    padded = np.pad(unit, ((92, 92 + rows * out - height), (92, 92 + cols * out - width)), mode="reflect")
    tiles = np.stack([padded[r * out : r * out + tile, c * out : c * out + tile]
                      for r in range(rows) for c in range(cols)])[:, None]  # fmt: skip
    x = torch.from_numpy(tiles)
    if CHANNELS_LAST:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), _autocast(precision):
        probabilities = torch.softmax(model(x).float(), dim=1).permute(0, 2, 3, 1).numpy()
    stitched = probabilities.reshape(rows, cols, out, out, -1).transpose(0, 2, 1, 3, 4)
    return stitched.reshape(rows * out, cols * out, -1)[:height, :width]


def inference_seconds(image_hw=(512, 512), precision="float32", repeats=5, base_filters=64, threads=None) -> float:
    """Median seconds to segment one image end to end (normalise, pad, tile, net, softmax, stitch).

    Args:
        image_hw: Image size; four 572 -> 388 tiles cover 512 x 512 (the plain Keras peer's tiling).
        precision: ``"float32"`` or ``"bf16"`` (``torch.autocast("cpu", dtype=torch.bfloat16)``).
        repeats: Timed calls after one warm-up call.
        base_filters: 64 for the paper's net.
        threads: Intra-op threads (default: every core).
    """
    _setup(threads)
    model = unet(base_filters).eval()
    if CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    image = np.random.default_rng(0).integers(0, 256, image_hw, dtype=np.uint8)
    return _median_seconds(lambda: predict(model, image, precision), repeats)


def train_step_seconds(tile=572, batch=1, precision="float32", steps=5, base_filters=64, warmup=2) -> float:
    """Median seconds of one training step after ``warmup`` warm-up steps.

    A step is the forward pass (under autocast for bf16), the pixel-weighted softmax cross-entropy of the
    paper (eq. 1, a weight map over the ``tile - 184`` output, computed in float32), the backward pass and
    an SGD update with momentum 0.99, as ``benchmarks/train_step.py`` times kunet.
    """
    _setup(None)
    model = unet(base_filters).train()
    if CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99)
    generator = torch.Generator().manual_seed(0)
    out = tile - 184
    x = torch.randn(batch, 1, tile, tile, generator=generator)
    if CHANNELS_LAST:
        x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch, out, out), generator=generator)
    weights = 1 + 9 * torch.rand(batch, out, out, generator=generator)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(precision):
            logits = model(x)
        loss = (F.cross_entropy(logits.float(), labels, reduction="none") * weights).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    return _median_seconds(step, steps, warmup=warmup)


def copy_kunet_weights(keras_model, torch_model) -> None:
    """Loads a kunet ``UNet`` (paper variant, valid padding, no batch norm)'s weights into :func:`unet`'s net."""
    depth = len(torch_model.upconv)
    pairs = [(f"down{level}_conv{i}", torch_model.down[level][2 * i - 2]) for level in range(depth + 1) for i in (1, 2)]
    pairs += [(f"up{level}_upconv", torch_model.upconv[level]) for level in range(depth)]
    pairs += [(f"up{level}_conv{i}", torch_model.up[level][2 * i - 2]) for level in range(depth) for i in (1, 2)]
    pairs.append(("classifier", torch_model.classifier))
    with torch.no_grad():
        for name, module in pairs:
            kernel, bias = keras_model.get_layer(name).get_weights()
            # Keras: [kh, kw, in, out] (transposed: [kh, kw, out, in]); PyTorch: [out, in, kh, kw] / [in, out, kh, kw].
            module.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
            module.bias.copy_(torch.from_numpy(bias))


def main():
    """Prints both nets' parameter counts at base 64 and 32 and their largest logit difference on one tile."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kunet.model import UNet

    if version() is None:
        print("PyTorch: not installed")
        return
    for base in (64, 32):
        keras_model, torch_model = UNet(base_filters=base, seed=0), unet(base).eval()
        copy_kunet_weights(keras_model, torch_model)
        x = np.random.default_rng(0).normal(size=(1, 188, 188, 1)).astype(np.float32)
        with torch.inference_mode():
            theirs = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
        ours = keras_model(x).numpy()
        print(f"base {base}: kunet {keras_model.count_params():,} parameters, PyTorch "
              f"{sum(p.numel() for p in torch_model.parameters()):,}; same weights, 188 tile: max |logits "
              f"difference| {np.abs(ours - theirs).max():.1e} (logits up to {np.abs(ours).max():.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
