"""The tf.data training pipeline: determinism, exact resume, host == device placement, sharding."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kunet.model import output_size
from kunet.pipeline import decoded_frames, device_tiles, resolve_placement, training_dataset
from kunet.records import iterate_frames, read_manifest


def _batches(config, records, count, **kwargs):
    dataset = training_dataset(config, records, batch_size=2, **kwargs)
    return [tuple(t.numpy() for t in batch) for batch in dataset.take(count)]


def test_batches_have_the_tile_shapes_and_only_class_indices(tiny_records):
    config, records = tiny_records
    tiles, classes, weights = _batches(config, records, 1)[0]
    out = output_size(config.train.tile_size, config.model.depth)
    assert tiles.shape == (2, 124, 124, 1) and tiles.dtype == np.float32
    assert classes.shape == (2, out, out) and set(np.unique(classes)) <= {0, 1}
    assert weights.shape == (2, out, out) and weights.min() > 0


@pytest.mark.slow
def test_same_seed_same_stream_and_another_seed_another(tiny_records):
    config, records = tiny_records
    first, again = _batches(config, records, 4), _batches(config, records, 4)
    for a, b in zip(first, again):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    config.train.seed += 1
    try:
        other = _batches(config, records, 1)
    finally:
        config.train.seed -= 1
    assert not np.array_equal(other[0][0], first[0][0])


def test_resuming_at_step_n_continues_the_stream_exactly(tiny_records):
    config, records = tiny_records
    straight = _batches(config, records, 6)
    resumed = _batches(config, records, 2, start_step=4)
    for a, b in zip(straight[4:], resumed):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_device_placement_gives_the_same_tiles_as_host_placement(tiny_records):
    config, records = tiny_records
    config.augment.jit_compile = True  # the host sampler as training runs it by default: under XLA
    try:
        host = _batches(config, records, 2, placement="host")
    finally:
        config.augment.jit_compile = False
    device = training_dataset(config, records, batch_size=2, placement="device")
    for (tiles, classes, weights), batch in zip(host, device.take(2)):
        assert set(batch) >= {"image", "classes", "weight", "size", "seed"}
        got = device_tiles(batch, config)
        np.testing.assert_allclose(got[0].numpy(), tiles, atol=1e-4)
        np.testing.assert_array_equal(got[1].numpy(), classes)
        np.testing.assert_allclose(got[2].numpy(), weights, atol=1e-4)


def test_unaugmented_tiles_are_normalised_with_whole_image_statistics(tiny_records):
    config, records = tiny_records
    tiles, classes, _ = _batches(config, records, 1, augment=False)[0]
    frames = {f["frame_id"]: f for f in iterate_frames(records, "train")}
    unit_images = [f["image"][..., 0].astype(np.float64) / 255 for f in frames.values()]
    for tile in tiles[..., 0]:
        # A centred tile (mirror-extended beyond the 96-px frame) of one of the frames, standardised with
        # that frame's mean and std: find which frame it is and check the numbers.
        matches = []
        for unit in unit_images:
            padded = np.pad(unit, 14, mode="reflect")  # (124 - 96) / 2
            expected = (padded - unit.mean()) / unit.std()
            matches.append(np.abs(expected - tile).max())
        assert min(matches) < 1e-4


def test_frames_are_sharded_between_input_pipelines(tiny_records):
    _, records = tiny_records

    def ids(shards, index):
        dataset = decoded_frames(records, "train", shards, index)
        return {float(np.round(frame["norm_shift"].numpy(), 6)) for frame in dataset}

    total = read_manifest(records)["counts"]["train"]
    first, second = ids(2, 0), ids(2, 1)
    assert not first & second and len(first) + len(second) == total


def test_placement_auto_is_host_without_a_gpu():
    assert resolve_placement("auto") == ("device" if tf.config.list_physical_devices("GPU") else "host")
    assert resolve_placement("device") == "device"


def test_records_are_read_through_tf_io_gfile_urls(tiny_records):
    _, records = tiny_records
    manifest = read_manifest(f"file://{records}")
    dataset = decoded_frames(f"file://{records}", "val")
    assert sum(1 for _ in dataset) == manifest["counts"]["val"]


def test_percentile_statistics_of_training_frames_are_numpys(tiny_records):
    from kunet.config import ImageConfig
    from kunet.preprocess import percentile_statistics

    _, records = tiny_records
    settings = ImageConfig(normalize="percentile", percentile_low=2.0, percentile_high=99.0)
    for frame in decoded_frames(records, "val", normalize="percentile", settings=settings):
        expected = percentile_statistics(frame["image"].numpy(), 2.0, 99.0)
        assert (float(frame["norm_shift"]), float(frame["norm_scale"])) == expected
