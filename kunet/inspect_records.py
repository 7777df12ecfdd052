"""``kunet inspect-records``: the manifest in words and a PNG of a few frames with outlines and weights."""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

from kunet import visualize
from kunet.records import iterate_frames, read_manifest


def summarize(manifest: dict) -> list[str]:
    weights = manifest["weight_map"]
    lines = [
        f"records '{manifest['name']}' (schema {manifest['schema_version']}, kunet {manifest['kunet_version']})",
        f"frames: {manifest['counts']['train']} train, {manifest['counts']['val']} val; "
        f"images {manifest['image']['dtype']} x{manifest['image']['channels']}; labels {manifest['labels']['kind']}"
        f" ({manifest['labels']['dtype']})",
        "classes: "
        + ", ".join(
            f"{name}={value} ({100 * freq:.1f} %, w_c {wc:.2f})"
            for name, value, freq, wc in zip(
                manifest["labels"]["class_names"],
                manifest["labels"]["class_values"],
                manifest["class_frequencies"],
                weights["class_weights"],
            )
        ),
        f"weight map: {weights['preset']} (w0 {weights['w0']:g}, sigma {weights['sigma']:g}, "
        f"exponent over {weights['sigma_factor']:g}*sigma^2, border term on {weights['border_term_on']})",
    ]
    for shard in manifest["shards"]:
        lines.append(
            f"  {shard['file']}: {shard['count']} frames, {shard['bytes'] / 1e6:.2f} MB, sha256 {shard['sha256'][:12]}"
        )
    return lines


def write_preview(
    records_dir: str | os.PathLike, path: str | os.PathLike, count: int = 3, split: str = "train"
) -> Path:
    """PNG rows of: image with class outlines, weight-map heat map (shared colour scale)."""
    frames = list(islice(iterate_frames(records_dir, split), count))
    if not frames:
        frames = list(islice(iterate_frames(records_dir, "val"), count))
    vmax = max(float(frame["weight"].max()) for frame in frames)
    panels = []
    for frame in frames:
        panels.append(
            visualize.label_text(visualize.overlay_outlines(frame["image"], frame["classes"]), frame["frame_id"])
        )
        panels.append(visualize.label_text(visualize.heatmap(frame["weight"], vmax), f"weight (max {vmax:.1f})"))
    return visualize.save_png(path, visualize.grid(panels, columns=2))


def inspect(records_dir: str | os.PathLike, preview: str | os.PathLike | None, count: int = 3) -> list[str]:
    lines = summarize(read_manifest(records_dir))
    if preview:
        lines.append(f"preview: {write_preview(records_dir, preview, count)}")
    return lines
