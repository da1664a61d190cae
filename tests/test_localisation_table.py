"""The side-by-side localisation table: its numbers are the studies' own (known records), methods a model lacks
are empty, and an empty comparison is refused."""
import numpy as np
import pytest

from nbhelpers.validate import ArgumentError
from nbhelpers.localisation import THRESHOLDS, LocalisationResult, side_by_side


def _study(aurocs: dict[str, list[float]], iou: dict[str, float]) -> LocalisationResult:
    """Records of 8 images × 2 words with the given per-record AUROCs and a flat IoU curve per method."""
    n = len(next(iter(aurocs.values())))
    records = [{"image": i // 2, "target": f"w{i % 2}", "kind": "colour", "auroc": {m: a[i] for m, a in aurocs.items()}}
               for i in range(n)]
    curves = {m: np.full((n, len(THRESHOLDS)), v) for m, v in iou.items()}
    return LocalisationResult(records, THRESHOLDS, curves)


def test_side_by_side_reports_each_models_scores():
    rng = np.random.default_rng(0)
    a = {"cmi": list(0.9 + 0.05 * rng.standard_normal(16)), "whole image": [0.5] * 16}
    b = {**{k: list(np.array(v) - 0.2) for k, v in a.items() if k == "cmi"}, "whole image": [0.5] * 16,
         "concept attention": list(0.6 + 0.05 * rng.standard_normal(16))}
    table = side_by_side({"unet": _study(a, {"cmi": 0.7, "whole image": 0.2}),
                          "dit": _study(b, {"cmi": 0.5, "whole image": 0.2, "concept attention": 0.4})})
    assert list(table.columns.get_level_values("model").unique()) == ["unet", "dit"]
    assert table.loc["cmi", ("unet", "AUROC")] == pytest.approx(np.mean(a["cmi"]))
    assert table.loc["cmi", ("dit", "AUROC")] == pytest.approx(np.mean(a["cmi"]) - 0.2)
    assert table.loc["cmi", ("unet", "mIoU (best threshold)")] == pytest.approx(0.7)
    assert table.loc["concept attention", ("dit", "mIoU (calibrated threshold)")] == pytest.approx(0.4)
    assert np.isnan(table.loc["concept attention", ("unet", "AUROC")])  # the UNet has no such map
    lo, hi = map(float, table.loc["cmi", ("unet", "AUROC 95% CI")].split("–"))
    assert lo < np.mean(a["cmi"]) < hi and hi - lo < 0.1
    assert table.loc["whole image", ("dit", "AUROC 95% CI")] == "0.50–0.50"


def test_side_by_side_needs_a_study():
    with pytest.raises(ArgumentError, match="at least one study"):
        side_by_side({})


def test_miou_interval_matches_the_summary_and_rechooses_the_threshold():
    """Two thresholds: odd images do best at the first, even ones at the second (known curves). The calibrated
    score picks the even images' threshold and scores the odd images there; the best-threshold score is the
    maximum of the mean curve; both equal the summary's columns and lie in their intervals."""
    n_img, t = 10, len(THRESHOLDS)
    curves = np.zeros((2 * n_img, t))
    for r in range(2 * n_img):
        img = r // 2
        curves[r, 0], curves[r, 1] = (0.8, 0.4) if img % 2 else (0.3, 0.6)
    study = LocalisationResult([{"image": r // 2, "target": "w", "kind": "colour", "auroc": {"cmi": 0.7}}
                                for r in range(2 * n_img)], THRESHOLDS, {"cmi": curves})
    value, lo, hi = study.miou_interval("cmi", "calibrated")
    assert value == pytest.approx(0.4)  # threshold 1 (chosen on even images) scored on odd images
    assert value == pytest.approx(study.summary().loc["cmi", "mIoU (calibrated threshold)"])
    best, blo, bhi = study.miou_interval("cmi", "best")
    assert best == pytest.approx(0.55) == pytest.approx(study.summary().loc["cmi", "mIoU (best threshold)"])
    assert blo <= best <= bhi and lo <= value <= hi
    with pytest.raises(ArgumentError, match="'calibrated' or 'best'"):
        study.miou_interval("cmi", "median")
    with pytest.raises(ArgumentError, match="no IoU curves"):
        study.miou_interval("attention")
