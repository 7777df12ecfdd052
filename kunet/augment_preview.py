"""A picture of what the augmentation does: the original tile and augmented tiles of one image.

Each panel shows the input tile (gray values as augmented), the label's class boundaries inside the
output tile (red), the output tile's frame (yellow) and a reference grid drawn on the source image every
``grid_spacing`` pixels and warped through the very same coordinate map (cyan), so the deformation is
visible. With a weight map, a second image below each tile shows the warped weight map (viridis, the same
scale in every panel) inside the output frame.

Command line (ISBI 2012: label 0 = membrane, 255 = cell):
    python -m kunet.augment_preview IMAGE LABEL OUT.png [--tile 572 --output-tile 388 --seed 0 --count 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np

from kunet.augment import AugmentParams, coordinate_maps, gray_value_variation, warp
from kunet.metrics import label_boundaries

BOUNDARY_BGR = (40, 40, 255)
GRID_BGR = (255, 220, 0)
FRAME_BGR = (0, 220, 255)
CAPTION_HEIGHT = 24


def grid_image(height: int, width: int, spacing: int = 32, thickness: int = 2) -> np.ndarray:
    """[H, W] float32: 1 on reference lines every ``spacing`` px (both directions), 0 elsewhere."""
    rows = (np.arange(height) % spacing) < thickness
    cols = (np.arange(width) % spacing) < thickness
    return (rows[:, None] | cols[None, :]).astype(np.float32)


def _to_unit(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32)


def _tiles(image_unit, classes, weight, grid, params, input_tile, output_tile, seeds):
    """Sampled tiles through coordinate_maps + warp + gray_value_variation (= sample_tiles) plus the grid."""
    count = len(seeds)
    height, width, channels = image_unit.shape
    stacked = np.concatenate([image_unit, grid[..., None]], axis=-1)[None].repeat(count, 0)
    sizes = np.array([[height, width]] * count, np.int32)
    class_batch = classes[None].repeat(count, 0)
    coords = coordinate_maps(seeds, sizes, params, input_tile, classes=class_batch)
    weights = None if weight is None else weight[None].repeat(count, 0)
    tiles, tile_classes, tile_weights = warp(stacked, coords, sizes, class_batch, weights, output_tile)
    images = gray_value_variation(tiles[..., :channels], seeds, params).numpy()
    return (
        images,
        tiles[..., channels].numpy(),
        tile_classes.numpy(),
        None if tile_weights is None else tile_weights.numpy(),
    )


def _panel(image, grid, classes, weight, weight_max, input_tile, output_tile, caption):
    shown = np.clip(image, 0.0, 1.0)
    shown = shown[..., 0] if shown.shape[-1] == 1 else shown[..., :3].mean(-1)  # gray for display
    canvas = cv2.cvtColor((shown * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR).astype(np.float32)
    alpha = (0.7 * grid)[..., None]
    canvas = canvas * (1 - alpha) + np.array(GRID_BGR, np.float32) * alpha
    canvas = canvas.astype(np.uint8)
    start = (input_tile - output_tile) // 2
    window = canvas[start : start + output_tile, start : start + output_tile]
    window[label_boundaries(classes)] = BOUNDARY_BGR
    cv2.rectangle(canvas, (start - 1, start - 1), (start + output_tile, start + output_tile), FRAME_BGR, 1)
    parts = [np.full((CAPTION_HEIGHT, input_tile, 3), 255, np.uint8), canvas]
    cv2.putText(parts[0], caption, (4, CAPTION_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if weight is not None:
        below = np.full((input_tile, input_tile, 3), 40, np.uint8)
        scaled = np.clip(weight / weight_max, 0.0, 1.0)
        below[start : start + output_tile, start : start + output_tile] = cv2.applyColorMap(
            (scaled * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS
        )
        parts.append(below)
    return np.concatenate(parts, axis=0)


def write_augmentation_grid(
    path,
    image_unit,
    classes,
    weight,
    params: AugmentParams,
    input_tile: int,
    output_tile: int,
    seed: int = 0,
    count: int = 8,
    grid_spacing: int = 32,
) -> Path:
    """Writes a PNG grid: the un-augmented centred tile and ``count`` augmented tiles of one image.

    Args:
        path: output PNG.
        image_unit: [H, W] or [H, W, C] image in [0, 1] (integer images are scaled by their dtype's max).
        classes: [H, W] class indices (boundaries between classes are drawn).
        weight: [H, W] weight map or None.
        params: the augmentation to show; tile i uses the seed (seed, i), as sample_tiles would.
        input_tile, output_tile: tile sizes (e.g. 572, 388).

    Returns:
        The path written.
    """
    image_unit = _to_unit(image_unit)
    if image_unit.ndim == 2:
        image_unit = image_unit[..., None]
    classes = np.asarray(classes)
    weight = None if weight is None else np.asarray(weight, np.float32)
    grid = grid_image(*image_unit.shape[:2], spacing=grid_spacing)
    seeds = np.array([[seed, i] for i in range(count)], np.int64)
    original = _tiles(image_unit, classes, weight, grid, AugmentParams.disabled(), input_tile, output_tile, seeds[:1])
    augmented = _tiles(image_unit, classes, weight, grid, params, input_tile, output_tile, seeds)
    weight_max = float(weight.max()) if weight is not None and weight.max() > 0 else 1.0

    def panel(tiles, index: int, title: str) -> np.ndarray:
        tile_weight = None if weight is None else tiles[3][index]
        return _panel(tiles[0][index], tiles[1][index], tiles[2][index], tile_weight, weight_max, input_tile,
                      output_tile, title)  # fmt: skip

    panels = [panel(original, 0, "original")] + [panel(augmented, i, f"seed ({seed}, {i})") for i in range(count)]
    return _write_sheet(path, panels)


def _write_sheet(path, panels: list[np.ndarray], gap: int = 8) -> Path:
    """The panels in a near-square grid on white, written as a PNG."""
    columns = math.ceil(math.sqrt(len(panels)))
    height, width = panels[0].shape[:2]
    rows = math.ceil(len(panels) / columns)
    sheet = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for index, panel in enumerate(panels):
        r, c = divmod(index, columns)
        sheet[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = panel
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet):
        raise OSError(f"could not write {path}")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("label", help="label image; pixels > 0 are class 1 (ISBI 2012: 255 = cell)")
    parser.add_argument("out")
    parser.add_argument("--tile", type=int, default=572)
    parser.add_argument("--output-tile", type=int, default=388)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=8)
    for field in dataclasses.fields(AugmentParams):
        if field.type in ("bool", bool):
            continue
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    params = AugmentParams(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(AugmentParams) if hasattr(args, f.name)}
    )
    image = cv2.imread(args.image, cv2.IMREAD_UNCHANGED)
    label = cv2.imread(args.label, cv2.IMREAD_UNCHANGED)
    if image is None or label is None:
        raise SystemExit(f"cannot read {args.image} or {args.label}")
    classes = (label > 0).astype(np.uint8)
    print(
        write_augmentation_grid(
            args.out, image, classes, None, params, args.tile, args.output_tile, seed=args.seed, count=args.count
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
