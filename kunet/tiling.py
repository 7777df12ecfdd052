"""Tiling plans for overlap-tile prediction (paper Fig. 2), worked out without Keras or TensorFlow.

A plan fixes the input tile, its output and the stride for one image. Tiles advance by a multiple of
2^depth, so every tile sees the same pooling grid as one pass over the whole mirror-extended image and the
stitched result equals that pass (see :mod:`kunet.inference`).

:class:`TilingOptions` is the one object that carries a user's tiling choices (a fixed tile, or a rule
that picks one per image, the tiles per model call, memory budgets) from the CLI, the pipeline's
``[inference]`` section and ``kunet export`` to the code that tiles. :data:`TILE_RULES` holds the rules,
by name (docs/EXTENDING.md shows how to add one):

* ``fewest_flops`` (the default): the tile (height and width chosen separately) that needs the fewest
  FLOPs for the whole image within the memory budget; a 512x512 image takes one 700x700 tile (0.55 TFLOP)
  instead of four 572x572 tiles (1.34 TFLOP).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kunet.sizes import activation_bytes, layer_costs, layer_sizes, output_size, valid_input_size


@dataclass(frozen=True)
class TilePlan:
    """Input tile size, output tile size and stride per axis, and the tile counts for one image."""

    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    stride_hw: tuple[int, int]
    tiles_hw: tuple[int, int]
    border: int

    @property
    def num_tiles(self) -> int:
        return self.tiles_hw[0] * self.tiles_hw[1]


def _stride(out: int, depth: int, padding: str) -> int:
    period = 2**depth
    stride = (out // period) * period
    if stride == 0:
        raise ValueError(f"output tile {out} is smaller than the pooling period {period}")
    return stride


def net_border(depth: int, padding: str) -> int:
    """Context pixels lost per side: 92 for the paper's net, 0 for same padding."""
    if padding == "same":
        return 0
    size = valid_input_size(1, depth, "valid")
    return (size - output_size(size, depth, "valid")) // 2


def plan_for_tile(image_hw, tile_hw, depth: int = 4, padding: str = "valid") -> TilePlan:
    """The tiling of an image for a given input tile size (each side valid for the net)."""
    out = tuple(output_size(t, depth, padding) for t in tile_hw)
    stride = tuple(_stride(o, depth, padding) for o in out)
    if padding == "same":
        # Zero padding makes tile borders differ from a whole-image pass; keep a margin and overlap.
        raise ValueError("overlap-tile prediction needs a valid-padding model; predict same-padding models whole")
    tiles = tuple(max(1, math.ceil(n / s)) for n, s in zip(image_hw, stride))
    return TilePlan(tuple(tile_hw), out, stride, tiles, net_border(depth, padding))


# Float32 values per strip pixel and channel held at once while a strip is predicted: the gathered input
# rows, their normalised copy, the mirror-extended strip and its tiles (input channels), and the tiles'
# probabilities through the stitching reshapes (classes). An estimate that keeps streaming within budget.
STRIP_INPUT_COPIES, STRIP_OUTPUT_COPIES = 8, 4
# Working memory of streamed prediction (tiles and strip buffers), whatever the image size.
STREAMING_MEMORY_MB = 1024


def strip_bytes(tile_height, strip_width: int, input_channels: int, num_classes: int):
    """Rough memory of the buffers of one strip of ``tile_height`` input rows (see STRIP_INPUT_COPIES)."""
    values_per_pixel = STRIP_INPUT_COPIES * input_channels + STRIP_OUTPUT_COPIES * num_classes
    return tile_height * strip_width * values_per_pixel * 4


def choose_tile(
    image_hw,
    depth: int = 4,
    base_filters: int = 64,
    input_channels: int = 1,
    num_classes: int = 2,
    variant: str = "paper",
    memory_budget_mb: float = 4096,
    batch_size: int = 1,
    strip_width: int | None = None,
) -> TilePlan:
    """The input tile (height and width chosen separately) needing the fewest FLOPs for the whole image.

    Candidates run from the smallest valid tile up to one that covers the image in a single tile; those
    whose activations for ``batch_size`` tiles exceed ``memory_budget_mb`` are skipped. With
    ``strip_width`` (streaming one row of tiles at a time) the budget also holds that strip's buffers.
    """
    period = 2**depth
    first = valid_input_size(period, depth, "valid")  # the smallest tile whose stride is positive
    budget = memory_budget_mb * 1e6

    def memory(heights, widths):
        needed = batch_size * activation_bytes(heights, widths, base_filters, depth)
        return needed + (strip_bytes(heights, strip_width, input_channels, num_classes) if strip_width else 0)

    # Images smaller than one output tile still get the smallest tile (mirror extension fills it).
    heights = np.arange(first, max(first, valid_input_size(image_hw[0], depth, "valid")) + 1, period)
    widths = np.arange(first, max(first, valid_input_size(image_hw[1], depth, "valid")) + 1, period)
    # Drop sizes over budget even beside the smallest other side: keeps the candidate grid small.
    heights = heights[(memory(heights, first) <= budget) | (heights == first)]
    widths = widths[(memory(first, widths) <= budget) | (widths == first)]
    # FLOPs(h, w) = sum_l cost_l * h_l(h) * w_l(w): one matrix product scores every candidate pair.
    costs = np.asarray(layer_costs(input_channels, num_classes, base_filters, depth, variant), np.float64)
    layer_h = np.array([layer_sizes(int(h), depth, "valid") for h in heights], np.float64)
    layer_w = np.array([layer_sizes(int(w), depth, "valid") for w in widths], np.float64)
    flops = (layer_h * costs) @ layer_w.T
    strides_h = (heights - 2 * net_border(depth, "valid")) // period * period
    strides_w = (widths - 2 * net_border(depth, "valid")) // period * period
    tiles = np.ceil(image_hw[0] / strides_h)[:, None] * np.ceil(image_hw[1] / strides_w)[None, :]
    total = flops * tiles
    total[memory(heights[:, None], widths[None, :]) > budget] = np.inf
    total[0, 0] = min(total[0, 0], flops[0, 0] * tiles[0, 0])  # the smallest tile is always allowed
    row, column = np.unravel_index(np.argmin(total), total.shape)
    return plan_for_tile(image_hw, (int(heights[row]), int(widths[column])), depth)


# Bound for automatic tile sizes' activations (whole images), in MB.
MEMORY_BUDGET_MB = 4096


@dataclass(frozen=True)
class TilingOptions:
    """How images are cut into tiles.

    Args:
        tile_size: Input tile side for every image; 0 lets ``rule`` choose per image.
        rule: A name in :data:`TILE_RULES`.
        batch_size: Tiles per model call.
        memory_budget_mb: Bound for a chosen tile's activations (``batch_size`` tiles at once).
        streaming_memory_mb: Bound for tiles and strip buffers when an image is streamed a row of tiles
            at a time.
    """

    tile_size: int = 0
    rule: str = "fewest_flops"
    batch_size: int = 1
    memory_budget_mb: float = MEMORY_BUDGET_MB
    streaming_memory_mb: float = STREAMING_MEMORY_MB


def _fewest_flops(image_hw, net, options: TilingOptions, strip_width: int | None) -> TilePlan:
    budget = options.streaming_memory_mb if strip_width else options.memory_budget_mb
    return choose_tile(image_hw, net.depth, net.base_filters, net.input_channels, net.num_classes, net.variant,
                       budget, options.batch_size, strip_width)  # fmt: skip


# name -> rule(image_hw, net, options, strip_width) -> TilePlan. ``net`` is anything with the U-Net's
# depth, base_filters, input_channels, num_classes and variant (a kunet UNet has them).
TILE_RULES: dict[str, Callable] = {"fewest_flops": _fewest_flops}


def plan_tiles(image_hw, net, options: TilingOptions, strip_width: int | None = None) -> TilePlan:
    """The plan for one image: ``options.tile_size`` if set, else what ``options.rule`` chooses.

    Args:
        image_hw: Image height and width.
        net: The U-Net (its depth, base_filters, input_channels, num_classes, variant).
        options: The tiling options.
        strip_width: When streaming one row of tiles at a time, the image width (budget then includes it).
    """
    if options.tile_size:
        return plan_for_tile(image_hw, (options.tile_size, options.tile_size), net.depth)
    if options.rule not in TILE_RULES:
        raise ValueError(f"unknown tile rule {options.rule!r} (known: {', '.join(TILE_RULES)})")
    return TILE_RULES[options.rule](image_hw, net, options, strip_width)
