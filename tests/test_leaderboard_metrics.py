"""Golden tests of the ISBI 2012 leaderboard metrics (kunet.metrics.leaderboard).

Every expected number is worked out by hand in the comments from the definitions in Fiji's
trainableSegmentation.metrics (PixelError, RandError, VariationOfInformation, WarpingError,
ClassificationStatistics) and utils.WatershedTransform2D; none calls the code under test to get it.
Truths use the ISBI convention: 0 = membrane, 255 = cell ("C" below).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kunet import metrics
from kunet.metrics._common import _contingency, _ordered_pairs
from kunet.metrics.leaderboard import (
    BINARY_THRESHOLDS,
    THRESHOLDS,
    LeaderboardInputError,
    fiji_thresholds,
    leaderboard_pixel_error,
    leaderboard_rand_error,
)
from kunet.metrics.leaderboard_thinning import (
    leaderboard_thinned_scores,
    leaderboard_v_info,
    leaderboard_v_rand,
    thin_borders,
)
from kunet.metrics.leaderboard_warping import leaderboard_warping_error


def _image(rows: str) -> np.ndarray:
    """'C' = cell (255), anything else = membrane (0); rows separated by spaces."""
    return np.array([[255 if ch == "C" else 0 for ch in row] for row in rows.split()], dtype=np.uint8)


# Two cells of 6 pixels split by a membrane column (3 rows x 5 columns).
TWO_CELLS = _image("CCMCC CCMCC CCMCC")


def test_thresholds_are_fijis_accumulated_doubles():
    # for (th = 0.0; th <= 1.0; th += 0.1) in doubles: 11 values, rounding included.
    assert len(THRESHOLDS) == 11
    assert THRESHOLDS[3] == 0.30000000000000004 and THRESHOLDS[-1] == 0.9999999999999999
    assert fiji_thresholds(0.0, 0.9, 0.1)[-1] == 0.8999999999999999 and len(fiji_thresholds(0.0, 0.9, 0.1)) == 10
    with pytest.raises(LeaderboardInputError):
        fiji_thresholds(0.0, 1.5, 0.1)


def test_perfect_prediction_scores_zero_errors_and_unit_scores():
    truth = np.stack([TWO_CELLS, _image("CCCCC MMMMM CCCCC")])
    probabilities = (truth > 0).astype(np.float32)
    assert leaderboard_pixel_error(probabilities, truth).value == 0.0
    assert leaderboard_rand_error(probabilities, truth).value == 0.0
    assert leaderboard_warping_error(probabilities, truth).value == 0.0
    v_rand, v_info = leaderboard_thinned_scores(probabilities, truth)
    assert v_rand.value == 1.0 and v_info.value == 1.0


def test_pixel_error_sweep_picks_the_best_threshold():
    # truth  C    C    M    M       proposal 0.9 0.35 0.25 0.05
    # t=0.0: all four > t: TP 2, FP 2, FN 0 -> P 1/2, R 1 -> F 2/3 -> error 1/3
    # t=0.1, 0.2: TP 2, FP 1 -> P 2/3, R 1 -> F 0.8
    # t=0.30000000000000004: TP 2, FP 0, FN 0 -> F 1 (first maximum: this threshold, error 0)
    # t=0.4: TP 1, FN 1 -> P 1, R 1/2 -> F 2/3
    truth = _image("CCMM")
    proposal = np.array([[0.9, 0.35, 0.25, 0.05]], dtype=np.float32)
    result = leaderboard_pixel_error(proposal, truth)
    assert result.value == 0.0
    assert result.threshold == 0.30000000000000004
    assert result.per_threshold[0] == pytest.approx(1 / 3)
    assert result.per_threshold[1] == pytest.approx(0.2)
    assert result.per_threshold[4] == pytest.approx(1 / 3)


def test_pixel_error_counts_the_whole_stack_not_a_mean_of_slices():
    # Slice A: truth CCCC, proposal C... (one cell pixel): TP 1, FN 3.
    # Slice B: truth CCMM, proposal CCCC: TP 2, FP 2.
    # Whole stack: TP 3, FP 2, FN 3 -> P 3/5, R 1/2 -> F = 0.6/1.1 = 6/11 -> error 5/11 = 0.4545...
    # A mean of slices would be F_A = 2*1*0.25/1.25 = 0.4, F_B = 2*0.5*1/1.5 = 2/3 -> error 7/15 = 0.4667.
    truth = np.stack([_image("CCCC"), _image("CCMM")])
    decision = np.stack([_image("CMMM"), _image("CCCC")])
    result = leaderboard_pixel_error(decision, truth, BINARY_THRESHOLDS)
    assert result.value == pytest.approx(5 / 11)
    assert result.value != pytest.approx(7 / 15)


def test_pixel_f_score_at_one_threshold_is_the_cell_dice_of_kunet():
    rng = np.random.default_rng(3)
    truth = np.where(rng.random((32, 32)) < 0.7, 255, 0).astype(np.uint8)
    decision = rng.random((32, 32)) < 0.6
    dice = metrics.dice_per_class(decision, truth > 0, 2)[1]
    assert leaderboard_pixel_error(decision, truth, BINARY_THRESHOLDS).value == pytest.approx(1 - dice)


def test_rand_error_of_a_merge():
    # The proposal calls the membrane column cell: one segment holding both true cells (6 + 6 pixels).
    # On truth cells (n = 12): n_ij = 6, 6; b = 12; a = 6, 6; c0 = 0.
    # TP = 36 + 36 = 72, FP = 144 - 72 = 72, FN = 72 - 72 = 0 -> P 1/2, R 1 -> F 2/3 -> error 1/3.
    result = leaderboard_rand_error(np.ones((3, 5), np.float32), TWO_CELLS, BINARY_THRESHOLDS)
    assert result.value == pytest.approx(1 / 3)


def test_rand_error_of_a_split_counts_missed_pixels_as_singletons():
    # The proposal cuts the left cell with a membrane row: CCMCC / MMMCC / CCMCC.
    # Left cell -> two 2-pixel segments and 2 pixels called membrane (c0 = 2 singletons); right cell whole.
    # TP = 2² + 2² + 6² + c0 = 46, FP = (2² + 2² + 6²) + c0 - TP = 0, FN = (6² + 6²) - 46 = 26
    # -> P 1, R 46/72 -> F = 2 R / (1 + R) = 92/118 = 46/59 -> error 13/59.
    proposal = _image("CCMCC MMMCC CCMCC") / 255.0
    result = leaderboard_rand_error(proposal, TWO_CELLS, BINARY_THRESHOLDS)
    assert result.value == pytest.approx(13 / 59)


def test_rand_error_sums_pairs_over_the_stack():
    # Slice 1 the merge above (TP 72, FP 72, FN 0), slice 2 perfect (TP 72, FP 0, FN 0).
    # Whole stack: TP 144, FP 72, FN 0 -> P 2/3, R 1 -> F 0.8 -> error 0.2.
    # A mean of the slices' F-scores would give 1 - (2/3 + 1)/2 = 1/6.
    truth = np.stack([TWO_CELLS, TWO_CELLS])
    proposal = np.stack([np.ones((3, 5)), TWO_CELLS / 255.0]).astype(np.float32)
    assert leaderboard_rand_error(proposal, truth, BINARY_THRESHOLDS).value == pytest.approx(0.2)


def test_rand_pair_counts_agree_with_kunets_adapted_rand_where_they_coincide():
    # Fiji counts pairs with self-pairs (Σ n²) and kunet without (Σ n(n-1)): over the n truth cell pixels the
    # disagreeing pairs are the same and Fiji's agreeing pairs exceed kunet's by n. With no truth cell pixel
    # called membrane (c0 = 0), 1 - F_Fiji = 1 - 2 (S + n) / (S_truth + S_pred + 2 n) from kunet's counts.
    rng = np.random.default_rng(7)
    truth = np.where(rng.random((40, 40)) < 0.75, 255, 0).astype(np.uint8)
    decision = (truth > 0) | (rng.random((40, 40)) < 0.5)  # only merges: every truth cell pixel is cell
    truth_segments = metrics.segments_from_foreground(truth)
    proposed = metrics.segments_from_foreground(decision)
    keep = truth_segments > 0
    table = _contingency(truth_segments[keep], proposed[keep])
    same, same_truth, same_pred = (_ordered_pairs(x) for x in (table.counts, table.row_sizes(), table.col_sizes()))
    n = int(keep.sum())
    expected = 1 - 2 * (same + n) / (same_truth + same_pred + 2 * n)
    assert leaderboard_rand_error(decision, truth, BINARY_THRESHOLDS).value == pytest.approx(expected)


# A 3 x 7 slice: left cell (columns 0-1), membrane column 2, right cell (columns 3-6).
THIN_TRUTH = _image("CCMCCCC CCMCCCC CCMCCCC")
# The proposal's membrane is three columns wide (2-4).
THICK_PROPOSAL = _image("CCMMMCC CCMMMCC CCMMMCC")


def test_thinning_floods_membrane_from_both_sides_and_keeps_a_one_pixel_line():
    # Fiji's flood, column-major queue: column 2 (next to the left basin) and column 4 (next to the right
    # basin) are queued first; column 2 takes the left label, column 4 the right; column 3 is then reached
    # from the left first and also touches the right label, so it becomes the watershed line (0).
    thinned = thin_borders(THICK_PROPOSAL)
    left, right = thinned[0, 0], thinned[0, 6]
    assert left != right and left > 0 and right > 0
    assert (thinned[:, :3] == left).all() and (thinned[:, 3] == 0).all() and (thinned[:, 4:] == right).all()


def test_v_rand_and_v_info_after_thinning_by_hand():
    # Truth cells A (6 px) and B (12 px), n = 18. Thinned proposal on them: A -> P1 (6); B: column 3 on the
    # watershed line (c0 = 3 singletons), columns 4-6 -> P2 (9).
    # V_rand: TP = 36 + 81 + 3 = 120, FP = 36 + 81 + 3 - 120 = 0, FN = 36 + 144 - 120 = 60
    #   -> P 1, R 2/3 -> F = 0.8.
    # Without thinning (the 2012 Rand error) columns 3 and 4 of B are singletons (c0 = 6), B ∩ P2 = 6:
    #   TP = 36 + 36 + 6 = 78, FP 0, FN = 180 - 78 = 102 -> R 13/30 -> F 26/43 -> error 17/43.
    # V_info: with p = size / 18, H(A) = -(1/3 ln 1/3 + 2/3 ln 2/3); the joint cells equal the proposed
    #   segments, so H(A|B) = 0 and precision = 1; H(B) = -(1/3 ln 1/3 + 1/2 ln 1/2) + (3/18) ln 18,
    #   H(B|A) = H(B) - H(A), so recall = H(A) / H(B) and F = 2 R / (1 + R).
    proposal = THICK_PROPOSAL / 255.0
    assert leaderboard_v_rand(proposal, THIN_TRUTH, BINARY_THRESHOLDS).value == pytest.approx(0.8)
    assert leaderboard_rand_error(proposal, THIN_TRUTH, BINARY_THRESHOLDS).value == pytest.approx(17 / 43)
    h_a = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    h_b = -(1 / 3 * math.log(1 / 3) + 1 / 2 * math.log(1 / 2)) + 3 / 18 * math.log(18)
    recall = h_a / h_b
    assert leaderboard_v_info(proposal, THIN_TRUTH, BINARY_THRESHOLDS).value == pytest.approx(2 * recall / (1 + recall))


def test_v_rand_averages_slice_f_scores_as_the_challenge_script_asks():
    # Slices: the thinned case above (F 0.8: TP 120, FP 0, FN 60) and a perfect one (TP 180, FP 0, FN 0).
    # perSliceAverage = true (the challenge's script): (0.8 + 1) / 2 = 0.9.
    # Summed counts instead: TP 300, FN 60 -> R 5/6 -> F = (5/3)/(11/6) = 10/11.
    truth = np.stack([THIN_TRUTH, THIN_TRUTH])
    proposal = np.stack([THICK_PROPOSAL, THIN_TRUTH]) / 255.0
    assert leaderboard_v_rand(proposal, truth, BINARY_THRESHOLDS).value == pytest.approx(0.9)
    assert leaderboard_v_rand(proposal, truth, BINARY_THRESHOLDS, per_slice_average=False).value == pytest.approx(
        10 / 11
    )


def test_warping_error_counts_a_merge():
    # The proposal fills the membrane column. Each of its 3 pixels would join the two cells, so none is
    # simple and none flips; each has both cells among its neighbours and is background in the warped truth:
    # 3 merger pixels / 15 pixels = 0.2; clustered by error they are one 8-connected merger: 1/15.
    proposal = np.ones((3, 5), np.float32)
    assert leaderboard_warping_error(proposal, TWO_CELLS, BINARY_THRESHOLDS).value == pytest.approx(0.2)
    clustered = leaderboard_warping_error(proposal, TWO_CELLS, BINARY_THRESHOLDS, cluster_by_error=True)
    assert clustered.value == pytest.approx(1 / 15)


def test_warping_error_counts_a_split_after_fijis_sequential_flips():
    # Truth: one 3 x 5 cell. Proposal: a membrane column 2. In Fiji's column-major order (0,2) is simple
    # (its cell neighbours connect below it, the outside is one background component) and flips; then (1,2)
    # is simple too (background (0,2) above, cell neighbours joined through row 2) and flips; (2,2) would cut
    # the cell in two, so it stays: 1 mismatch. It has the cell and background around it, and removing it
    # leaves three ids (background, left part, right part): a split. Error 1/15.
    truth = _image("CCCCC CCCCC CCCCC")
    proposal = _image("CCMCC CCMCC CCMCC") / 255.0
    assert leaderboard_warping_error(proposal, truth, BINARY_THRESHOLDS).value == pytest.approx(1 / 15)


def test_a_shifted_boundary_is_no_warping_error_but_is_a_pixel_error():
    # The membrane column moves one pixel right: every mismatch is simple, the warp absorbs it.
    shifted = _image("CCCMC CCCMC CCCMC") / 255.0
    assert leaderboard_warping_error(shifted, TWO_CELLS, BINARY_THRESHOLDS).value == 0.0
    assert leaderboard_pixel_error(shifted, TWO_CELLS, BINARY_THRESHOLDS).value > 0.0


def test_warping_sweep_takes_the_minimum_over_thresholds():
    # Membrane column at 0.25: thresholds 0.0, 0.1 and 0.2 call it cell (3 mergers, 0.2); 0.30000000000000004
    # is the first above 0.25, where the proposal equals the truth (0), and the minimum is kept from there.
    proposal = np.where(TWO_CELLS > 0, 0.9, 0.25).astype(np.float32)
    result = leaderboard_warping_error(proposal, TWO_CELLS)
    assert result.value == 0.0 and result.threshold == 0.30000000000000004
    assert result.per_threshold[:3] == pytest.approx((0.2, 0.2, 0.2))


def test_stacks_of_different_shapes_are_a_user_error():
    with pytest.raises(LeaderboardInputError, match="differ in shape"):
        leaderboard_pixel_error(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


# --- kunet evaluate --leaderboard ---------------------------------------------------------------------------


def test_evaluate_leaderboard_reports_both_rows_and_leaves_the_plain_report_alone(
    trained_tiny_run, tiny_records, tmp_path
):
    import json

    from kunet_cli.main import app
    from typer.testing import CliRunner

    _, records = tiny_records
    toml = tmp_path / "tiny.toml"
    toml.write_text('name = "tiny"\n[model]\nbase_filters = 4\ndepth = 2\n[train]\ntile_size = 124\n')
    common = ["evaluate", str(trained_tiny_run), str(toml), "--records", str(records)]
    plain = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    assert "leaderboard" not in json.loads((tmp_path / "plain" / "scores.json").read_text())
    assert "ISBI" not in plain.output
    result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "board"), "--leaderboard"])
    assert result.exit_code == 0, result.output
    board = json.loads((tmp_path / "board" / "scores.json").read_text())["leaderboard"]
    for row in ("probabilities", "decision"):
        assert set(board[row]) >= {"pixel_error", "rand_error", "warping_error", "v_rand", "v_info"}
        assert all(0.0 <= board[row][k] <= 1.0 for k in ("pixel_error", "rand_error", "v_rand", "v_info"))
    assert board["decision"]["pixel_error_threshold"] == 0.0
    # Both ISBI rows and kunet's own row are printed, with the definition each uses.
    assert "ISBI, probs" in result.output and "ISBI, decision" in result.output
    assert "kunet, decision" in result.output and "1 - max F of pixel similarity" in result.output


def test_evaluate_leaderboard_adds_the_cut_map_of_a_watershed_rule(trained_tiny_run, tiny_records, tmp_path):
    import json

    from kunet_cli.main import app
    from typer.testing import CliRunner

    from kunet.decision import DecisionRule
    from kunet.records import iterate_frames
    from kunet.segmenter import Segmenter
    from kunet.tune import store_settings

    _, records = tiny_records
    model = tmp_path / "watershed.keras"
    model.write_bytes((trained_tiny_run / "best.keras").read_bytes())
    rule = {"threshold": 0.4, "postprocess": "watershed", "seed_threshold": 0.6, "seed_smoothing": 1.0}
    store_settings(model, rule)
    toml = tmp_path / "tiny.toml"
    toml.write_text('name = "tiny"\n[model]\nbase_filters = 4\ndepth = 2\n[train]\ntile_size = 124\n')
    args = ["evaluate", str(model), str(toml), "--records", str(records), "--out", str(tmp_path / "e"), "--leaderboard"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ISBI, cut map" in result.output and "best thresholds (cut map)" in result.output
    board = json.loads((tmp_path / "e" / "scores.json").read_text())["leaderboard"]
    # The row scores the stored rule's cut map of each frame, stacked in frame order.
    segmenter = Segmenter(model)
    assert DecisionRule.of(segmenter.settings) == DecisionRule(0.4, "watershed", 0.6, False, 1.0)
    frames = sorted(iterate_frames(records, "val"), key=lambda frame: frame["frame_id"])
    cut_maps = np.stack([segmenter.rule.cut_map(segmenter.probabilities(frame["image"])) for frame in frames])
    truth = np.stack([frame["classes"] for frame in frames])
    assert (cut_maps == 0).any()
    expected = leaderboard_rand_error(cut_maps, truth)
    assert board["cut_map"]["rand_error"] == pytest.approx(expected.value, abs=1e-12)
    assert board["cut_map"]["pixel_error"] == pytest.approx(leaderboard_pixel_error(cut_maps, truth).value, abs=1e-12)


def test_leaderboard_refuses_labels_that_are_not_binary():
    from kunet.evaluation import _check_leaderboard_labels
    from kunet.scoring import LeaderboardLabelError

    with pytest.raises(LeaderboardLabelError, match="binary labels"):
        _check_leaderboard_labels("instance", 2)
    with pytest.raises(LeaderboardLabelError, match="3-class"):
        _check_leaderboard_labels("binary", 3)
