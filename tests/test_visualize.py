"""training.png's four panels (matplotlib) and the legend band of overlay PNGs."""

from __future__ import annotations

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from kunet import visualize
from kunet.scoring import VALIDATION_METRICS

PANELS = ["loss", "validation metrics", "learning rate", "seconds per epoch"]


def _history(epochs: int, validate_every: int = 1) -> list[dict]:
    """Rows as history.csv gives them back: strings, empty where an epoch had no validation."""
    rows = []
    for epoch in range(1, epochs + 1):
        validated = epoch % validate_every == 0
        rows.append({
            "epoch": str(epoch), "step": str(10 * epoch), "loss": str(1 / epoch),
            "learning_rate": str(1e-3 * 0.5 ** (epoch - 1)), "seconds": str(30.0 * epoch + epoch**2),
            "val_loss": str(2 / epoch) if validated else "",
            "val_pixel_error": str(0.1 / epoch) if validated else "",
        })  # fmt: skip
    return rows


def _tick_labels(axes) -> list[str]:
    return [label.get_text() for label in axes.get_xticklabels()]


def test_history_panels_of_one_epoch():
    panels = visualize.history_panels(_history(1), VALIDATION_METRICS)
    assert list(panels) == PANELS
    assert panels["loss"] == {"loss": [(1.0, 1.0)], "val_loss": [(1.0, 2.0)]}
    assert panels["validation metrics"] == {"val_pixel_error": [(1.0, 0.1)]}
    assert panels["learning rate"] == {"learning_rate": [(1.0, 1e-3)]}
    assert panels["seconds per epoch"] == {"seconds": [(1.0, 31.0)]}


def test_history_panels_of_several_epochs_skip_epochs_without_validation():
    panels = visualize.history_panels(_history(6, validate_every=2), VALIDATION_METRICS)
    assert [epoch for epoch, _ in panels["loss"]["loss"]] == [1, 2, 3, 4, 5, 6]
    assert panels["loss"]["val_loss"] == [(2.0, 1.0), (4.0, 0.5), (6.0, 2 / 6)]
    assert [epoch for epoch, _ in panels["validation metrics"]["val_pixel_error"]] == [2, 4, 6]
    # cumulative 30 e + e^2: epoch e took 30 + 2 e - 1 seconds (the first its own 31)
    assert panels["seconds per epoch"]["seconds"] == [(e, 29.0 + 2 * e) for e in range(1, 7)]


def test_history_without_validation_has_an_empty_metrics_panel():
    rows = [{key: value for key, value in row.items() if not key.startswith("val_")} for row in _history(3)]
    panels = visualize.history_panels(rows, VALIDATION_METRICS)
    assert panels["loss"].keys() == {"loss"} and panels["validation metrics"] == {}
    figure = visualize.history_figure(rows, "run", VALIDATION_METRICS)
    assert [text.get_text() for text in figure.axes[1].texts] == ["no validation"]


def test_history_figure_of_one_epoch_has_four_panels_and_one_epoch_tick():
    figure = visualize.history_figure(_history(1), "run: training", VALIDATION_METRICS)
    FigureCanvasAgg(figure).draw()
    assert len(figure.axes) == 4
    assert [axes.get_title() for axes in figure.axes] == PANELS
    assert figure.get_suptitle() == "run: training"
    bottom = figure.axes[2:]
    assert [_tick_labels(axes) for axes in bottom] == [["1"], ["1"]]
    assert bottom[0].get_xlim() == (0.5, 1.5)
    assert [axes.get_xlabel() for axes in bottom] == ["epoch", "epoch"]


def test_history_figure_of_many_epochs_has_integer_ticks_and_a_log_learning_rate():
    figure = visualize.history_figure(_history(12, validate_every=3), "run", VALIDATION_METRICS)
    FigureCanvasAgg(figure).draw()
    labels = _tick_labels(figure.axes[3])
    assert 3 <= len(labels) <= 12 and all(float(label).is_integer() for label in labels), labels
    assert figure.axes[2].get_yscale() == "log"  # 1e-3 down to 5e-7
    loss_legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert loss_legend == ["loss", "val_loss"]


def test_plot_history_writes_the_figure_as_a_png(tmp_path):
    path = visualize.plot_history(_history(4), tmp_path / "training.png", "run", VALIDATION_METRICS)
    image = cv2.imread(str(path))
    assert image.shape == (700, 1100, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # drawn, not a blank canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training.png"]  # no temporary left behind


def _overlay_inputs(height: int, width: int, channels: int = 0):
    rng = np.random.default_rng(height * width)
    shape = (height, width, channels) if channels else (height, width)
    image = rng.integers(0, 4000, shape, dtype=np.uint16)
    truth = np.zeros((height, width), np.uint8)
    truth[height // 4 : height // 2, width // 4 : width // 2] = 1
    return image, np.roll(truth, 2, axis=0), truth


def _has_colour(rgb: np.ndarray, colour) -> bool:
    return bool(np.all(rgb == colour, axis=-1).any())


def test_an_overlay_file_gets_a_legend_band_below_the_unchanged_overlay():
    image, predicted, truth = _overlay_inputs(40, 300)
    plain = visualize.overlay_prediction(image, predicted, truth)
    assert plain.shape == (40, 300, 3)
    with_legend = visualize.overlay_prediction(image, predicted, truth, legend=True)
    assert with_legend.shape == (40 + visualize.legend_height(300), 300, 3) == (64, 300, 3)
    np.testing.assert_array_equal(with_legend[:40], plain)
    band = with_legend[40:]
    assert _has_colour(band, visualize.PREDICTION_COLOUR) and _has_colour(band, visualize.OUTLINE_COLOUR)
    assert _has_colour(band, visualize.LEGEND_TEXT)
    without_truth = visualize.overlay_prediction(image, predicted, legend=True)[40:]
    assert _has_colour(without_truth, visualize.PREDICTION_COLOUR)
    assert not _has_colour(without_truth, visualize.OUTLINE_COLOUR)


def test_legend_band_of_a_one_pixel_wide_and_of_an_rgb_image():
    image, predicted, truth = _overlay_inputs(30, 1)
    assert visualize.overlay_prediction(image, predicted, truth, legend=True).shape == (54, 1, 3)
    image, predicted, truth = _overlay_inputs(30, 64, channels=3)
    narrow = visualize.overlay_prediction(image, predicted, truth, legend=True)
    assert narrow.shape == (54, 64, 3)
    # Too narrow for both names: each entry gets half the width, both swatches show, the names are cut.
    assert _has_colour(narrow[30:, :32], visualize.PREDICTION_COLOUR)
    assert _has_colour(narrow[30:, 32:], visualize.OUTLINE_COLOUR)


def test_legend_band_grows_with_a_wide_image():
    band = visualize.legend_band(4000, visualize.overlay_legend(truth=True))
    assert band.shape == (96, 4000, 3)
    swatch_rows = np.all(band == visualize.PREDICTION_COLOUR, axis=-1).any(axis=1)
    assert swatch_rows.sum() == 48  # the 12-pixel swatch at 4x


def test_predicted_and_evaluated_overlay_files_carry_the_legend(tiny_records, tmp_path):
    from kunet.builders import build_model
    from kunet.evaluation import evaluate
    from kunet.predict_files import predict_files
    from kunet.records import read_manifest
    from kunet.segmenter import Segmenter

    config, records = tiny_records
    model_file = tmp_path / "model.keras"
    build_model(config, "float32", read_manifest(records)).save(model_file)
    segmenter = Segmenter(model_file)
    image = np.random.default_rng(0).integers(0, 255, (48, 400), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "image.png"), image)
    predict_files(segmenter, [tmp_path / "image.png"], tmp_path / "predicted")
    predicted = cv2.cvtColor(cv2.imread(str(tmp_path / "predicted" / "image_overlay.png")), cv2.COLOR_BGR2RGB)
    assert predicted.shape == (48 + 24, 400, 3) and _has_colour(predicted[48:], visualize.PREDICTION_COLOUR)
    evaluate(segmenter, records, "val", tmp_path / "evaluation")
    overlays = sorted((tmp_path / "evaluation").glob("*_overlay.png"))
    assert len(overlays) == 2  # the val frames of tiny_records
    for path in overlays:
        evaluated = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        assert evaluated.shape == (96 + 24, 96, 3)  # the blob frames are 96 x 96
        assert _has_colour(evaluated[96:], visualize.OUTLINE_COLOUR)


def test_instance_overlay_tints_touching_objects_apart_and_outlines_their_contact():
    image = np.full((20, 30), 100, np.uint8)
    objects = np.zeros((20, 30), np.int32)
    objects[4:16, 4:15], objects[4:16, 15:26] = 1, 2  # touching along a column
    merged = visualize.overlay_prediction(image, (objects > 0).astype(np.uint8))
    split = visualize.overlay_prediction(image, objects, instances=True)
    assert not np.array_equal(split[10, 8], split[10, 22])  # a tint per object
    assert np.array_equal(merged[10, 8], merged[10, 22])  # one foreground tint
    assert (split[10, 14] == visualize.PREDICTION_COLOUR).all() or (split[10, 15] == visualize.PREDICTION_COLOUR).all()
    assert not (merged[10, 14:16] == visualize.PREDICTION_COLOUR).all(axis=-1).any()  # no contact without ids
