"""Size arithmetic of the U-Net, in plain Python so configuration checks need neither Keras nor TensorFlow.

Valid-padding nets shrink every spatial dimension by 4 px per level and halve it at each of ``depth``
pooling steps, so only some input sizes fit: ``188 + 16k`` at depth 4 (output = input - 184). The smallest
valid input grows as ``2^depth`` (about ``12 * 2^depth``: 188 px at depth 4, 764 at 6, 3068 at 8), which is
why depth is capped at :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

PADDINGS = ("valid", "same")
# Deeper nets need tiles of 1532 px or more (and base_filters * 2^depth channels at the bottom); a depth
# beyond this is a typo, not an experiment.
MAX_DEPTH = 6

# Each level applies two 3x3 convolutions; unpadded, each removes one pixel per side.
_CONV_SHRINK_PER_LEVEL = 4


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_depth(depth: int) -> None:
    """Raises ValueError for a depth outside 1..MAX_DEPTH, saying why deep nets are refused."""
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(
            f"depth must be between 1 and {MAX_DEPTH}, got {depth}: the smallest valid tile grows as 2^depth "
            f"({smallest_valid_input(4)} px at depth 4, {smallest_valid_input(MAX_DEPTH)} px at depth {MAX_DEPTH})"
        )


def trace_valid_size(input_size: int, depth: int) -> int | None:
    """Follows one spatial dimension through the valid-padding net; None if some level does not fit."""
    size = input_size
    contracting_sizes = []
    for _ in range(depth):
        size -= _CONV_SHRINK_PER_LEVEL
        if size <= 0 or size % 2:
            return None
        contracting_sizes.append(size)
        size //= 2
    size -= _CONV_SHRINK_PER_LEVEL
    if size <= 0:
        return None
    for skip_size in reversed(contracting_sizes):
        size = 2 * size
        if size > skip_size:  # cannot happen for sizes that passed the contracting checks
            return None
        size -= _CONV_SHRINK_PER_LEVEL
        if size <= 0:
            return None
    return size


def skip_crops(depth: int = 4) -> list[int]:
    """Pixels cropped from each side of each skip connection, shallowest level first.

    Constant for every valid input size: (88, 40, 16, 4) at depth 4.
    """
    crops = []
    deficit = 8  # the deepest skip is 8 px larger than the up-sampled map (2x the bottleneck's 2x2 shrink)
    for _ in range(depth):
        crops.append(deficit // 2)
        deficit = 2 * deficit + 16
    return list(reversed(crops))


def smallest_valid_input(depth: int) -> int:
    """The smallest valid-padding input size, found in at most four steps (a search from 1 took 2^depth).

    An input that pools cleanly down to a bottleneck input ``b`` has size ``2^depth * b + 4 * (2^depth - 1)``;
    the expanding path needs ``b`` of 5 to 8, so the first such ``b`` that fits gives the smallest input.
    """
    period = 2**depth
    for bottleneck in range(5, 9):
        size = period * bottleneck + _CONV_SHRINK_PER_LEVEL * (period - 1)
        if trace_valid_size(size, depth) is not None:
            return size
    raise AssertionError(f"no valid input size for depth {depth}")  # b = 8 always fits


def nearest_valid_sizes(input_size: int, depth: int = 4, padding: str = "valid") -> tuple[int, int]:
    """The closest valid input sizes at or below and at or above ``input_size``."""
    first, period = size_rule(depth, padding)
    if input_size <= first:
        return first, first
    below = first + ((input_size - first) // period) * period
    above = below if below == input_size else below + period
    return below, above


def output_size(input_size: int, depth: int = 4, padding: str = "valid") -> int:
    """Output size of the U-Net for one spatial dimension.

    Args:
        input_size: Input height or width in pixels.
        depth: Number of pooling steps (4 in the paper).
        padding: ``"valid"`` (the paper) or ``"same"``.

    Returns:
        The output size; ``input_size - 184`` for the paper's net (572 -> 388).

    Raises:
        ValueError: if the size does not fit the net, naming the nearest valid sizes.

    Example:
        >>> output_size(572)
        388
    """
    check_choice("padding", padding, PADDINGS)
    if padding == "same":
        if input_size > 0 and input_size % (2**depth) == 0:
            return input_size
    else:
        result = trace_valid_size(input_size, depth)
        if result is not None:
            return result
    below, above = nearest_valid_sizes(input_size, depth, padding)
    raise ValueError(size_error(depth, padding).format(size=input_size, below=below, above=above))


def size_rule(depth: int, padding: str) -> tuple[int, int]:
    """``(first, step)``: the valid input sizes are exactly ``first + step * k`` for k >= 0."""
    check_choice("padding", padding, PADDINGS)
    period = 2**depth
    return (smallest_valid_input(depth) if padding == "valid" else period), period


def size_error(depth: int, padding: str) -> str:
    """The message for an input size that does not fit, with ``{size}``, ``{below}`` and ``{above}`` left open.

    One template for the eager check and the in-graph one (:mod:`kunet.model`), so both say the same.
    """
    first, step = size_rule(depth, padding)
    rule = (
        f"valid inputs are {first} + {step}k"
        if padding == "valid"
        else f"same-padding inputs must be positive multiples of {step}"
    )
    return (
        f"input size {{size}} does not fit a depth-{depth} U-Net with {padding} padding ({rule}); "
        "nearest valid sizes: {below} and {above}"
    )


def valid_input_size(min_output: int, depth: int = 4, padding: str = "valid") -> int:
    """Smallest valid input size whose output covers at least ``min_output`` pixels.

    Example:
        >>> valid_input_size(388)
        572
        >>> valid_input_size(512)
        700
    """
    if min_output <= 0:
        raise ValueError(f"min_output must be positive, got {min_output}")
    check_choice("padding", padding, PADDINGS)
    period = 2**depth
    if padding == "same":
        return int(math.ceil(min_output / period)) * period
    first = smallest_valid_input(depth)
    # Output grows by exactly one period per period of input above the smallest valid size.
    steps = max(0, math.ceil((min_output - output_size(first, depth, padding)) / period))
    return first + steps * period


# --- cost and memory of a net, for choosing tiles and for benchmarks ----------------------------------


def layer_costs(
    input_channels: int = 1,
    num_classes: int = 2,
    base_filters: int = 64,
    depth: int = 4,
    variant: str = "paper",
) -> list[int]:
    """FLOPs per output pixel of each convolution layer, in network order (2 FLOPs per multiply-add)."""
    costs, channels, skips = [], input_channels, []
    for level in range(depth + 1):
        filters = base_filters * 2**level
        costs += [2 * 9 * channels * filters, 2 * 9 * filters * filters]
        channels = filters
        skips.append(channels)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        up_filters = 2 * filters if (variant == "release2015" and level == 0) else filters
        costs.append(2 * 4 * channels * up_filters)
        costs += [2 * 9 * (up_filters + skips[level]) * filters, 2 * 9 * filters * filters]
        channels = filters
    costs.append(2 * channels * num_classes)
    return costs


def layer_sizes(size: int, depth: int = 4, padding: str = "valid") -> list[int]:
    """Output size along one axis of each layer counted by :func:`layer_costs`, in the same order."""
    shrink = 2 if padding == "valid" else 0
    sizes = []
    for level in range(depth + 1):
        sizes += [size - shrink, size - 2 * shrink]
        size -= 2 * shrink
        if level < depth:
            size //= 2
    for _ in range(depth):
        size *= 2
        sizes += [size, size - shrink, size - 2 * shrink]
        size -= 2 * shrink
    sizes.append(size)
    return sizes


def forward_flops(
    height: int,
    width: int,
    input_channels: int = 1,
    num_classes: int = 2,
    base_filters: int = 64,
    depth: int = 4,
    padding: str = "valid",
    variant: str = "paper",
) -> int:
    """FLOPs (2 per multiply-add) of one forward pass on a ``height`` x ``width`` input.

    Counts the convolutions, up-convolutions and the classifier, which are all but a fraction of a
    percent of the work. The paper's net on a 572x572 tile: about 335 GFLOP.
    """
    costs = layer_costs(input_channels, num_classes, base_filters, depth, variant)
    heights, widths = layer_sizes(height, depth, padding), layer_sizes(width, depth, padding)
    return int(sum(c * h * w for c, h, w in zip(costs, heights, widths)))


def activation_bytes(height, width, base_filters: int = 64, depth: int = 4, bytes_per_value: int = 4):
    """Rough peak activation memory of one inference on a ``height`` x ``width`` tile.

    The skip connections stay alive until the expanding path consumes them; on top of those the two
    largest maps of the first level coexist. Used to keep automatic tile sizes within a memory budget.
    """
    total, h, w = 0, height, width
    for level in range(depth):
        total = total + h * w * base_filters * 2**level
        h, w = h // 2, w // 2
    # Integers in, an integer out; NumPy arrays of sizes in, an array out (scores every tile at once).
    return (total + 2 * height * width * base_filters) * bytes_per_value
