"""Classical baselines: every modality's inputs (read by the baseline stage), the four models, predictions
for the paired verdict."""

import numpy as np
import pytest

from tests.demo_data import write_synthetic_split
from trainwise.components.models.classical import BASELINES, downsample_images, fit_baselines, image_features, make_baseline
from trainwise.pipelines.baseline import load_split_features


def test_downsample_averages_blocks_until_under_the_budget():
    img = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    out = downsample_images(img, max_pixels=4)  # 16 values -> 2x2 blocks
    assert out.shape == (2, 2, 2, 1)
    assert out[0, 0, 0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))
    assert downsample_images(img, max_pixels=16) is img  # within budget: untouched


def test_models_take_arrays_and_do_no_io():
    """The model module reads no files: the stage reads the split and hands it arrays."""
    import trainwise.components.models.classical as classical
    source = open(classical.__file__).read()
    for reader in ("read_manifest", "read_table", "open(", "pyarrow", "csv"):
        assert reader not in source, reader
    pixels = np.full((3, 8, 8, 1), 255, dtype=np.uint8)
    x = image_features(pixels, max_pixels=16)
    assert x.shape == (3, 16) and x.dtype == np.float32 and (x == 1.0).all()


def test_digits_features_are_flattened_scaled_pixels(digits_split):
    x, y, ids = load_split_features(digits_split, "train", max_pixels=1024)
    assert x.shape == (len(y), 64) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    small, _, _ = load_split_features(digits_split, "train", max_pixels=16)
    assert small.shape == (len(y), 16)  # 8x8 -> 4x4 by 2x2 blocks
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("modality", ["text", "sequence", "features"])
def test_every_baseline_beats_majority_on_each_modality(tmp_path, modality):
    d = write_synthetic_split(tmp_path, modality, n_per_class=60, n_classes=3)
    x_tr, y_tr, _ = load_split_features(d, "train")
    evals = {s: load_split_features(d, s)[:2] for s in ("val", "test")}
    if modality == "text":
        assert isinstance(x_tr, list) and isinstance(x_tr[0], str)
    else:
        assert x_tr.ndim == 2 and x_tr.dtype == np.float32
    scores, preds = fit_baselines(x_tr, y_tr, evals, models=list(BASELINES), seed=0, n_classes=3,
                                  text=modality == "text")
    assert set(scores) == set(BASELINES)
    for name, s in scores.items():
        assert {"val/acc", "val/f1_macro", "test/acc", "test/f1_macro", "fit_s"} <= set(s)
        assert len(preds[name]["test"]) == len(evals["test"][1])
    assert scores["majority"]["test/acc"] < 0.6
    best = max(scores[m]["test/acc"] for m in ("logistic_regression", "gradient_boosting"))
    assert best > 0.8, scores


def test_text_tfidf_is_fitted_on_train_only():
    model = make_baseline("logistic_regression", seed=0, text=True)
    model.fit(["alpha apple", "beta banana", "alpha amber", "beta blue"], [0, 1, 0, 1])
    vocab = model.steps[0][1].vocabulary_
    assert "alpha" in vocab and "gamma" not in vocab
    assert model.predict(["alpha alpha", "banana"]).tolist() == [0, 1]


def test_same_seed_same_predictions(digits_split):
    x, y, _ = load_split_features(digits_split, "train")
    xt, yt, _ = load_split_features(digits_split, "test")
    runs = [fit_baselines(x, y, {"test": (xt, yt)}, models=["decision_tree"], seed=3, n_classes=10)[1]
            for _ in range(2)]
    assert (runs[0]["decision_tree"]["test"] == runs[1]["decision_tree"]["test"]).all()


def test_unknown_baseline_is_named():
    with pytest.raises(ValueError, match="unknown baselines \\['svm'\\]"):
        fit_baselines(np.zeros((2, 1)), np.array([0, 1]), {}, models=["svm"], seed=0, n_classes=2)


def test_baselines_and_the_network_share_one_macro_f1_absent_classes_included():
    """Three classes, the third absent from the test rows: a perfect baseline and a network making the
    same predictions get the same macro F1, the absent class counted as 0 (issue 27: the baselines'
    averaged over present classes only, 1.0 against the network's 0.667)."""
    from trainwise.components.evaluation.metrics import classification_metrics

    rng = np.random.default_rng(0)
    x_tr = np.concatenate([rng.normal(3 * k, 0.1, size=(20, 2)) for k in range(3)]).astype(np.float32)
    y_tr = np.repeat(np.arange(3), 20)
    x_te = np.concatenate([rng.normal(3 * k, 0.1, size=(10, 2)) for k in range(2)]).astype(np.float32)
    y_te = np.repeat(np.arange(2), 10)
    scores, preds = fit_baselines(x_tr, y_tr, {"test": (x_te, y_te)}, models=["logistic_regression"], seed=0,
                                  n_classes=3)
    assert (preds["logistic_regression"]["test"] == y_te).all()
    proba = np.eye(3)[preds["logistic_regression"]["test"]]
    network, _, _ = classification_metrics(y_te, proba, classes=["a", "b", "c"])
    assert scores["logistic_regression"]["test/f1_macro"] == network["test/f1_macro"] == pytest.approx(2 / 3)


def test_a_class_with_one_train_row_does_not_crash_the_baselines():
    """Clean refuses classes of one row, but the id hash can still give a class of a few rows a
    single train row: gradient boosting's stratified early-stopping split then raised (issue 28.7)."""
    rng = np.random.default_rng(0)
    y_tr = np.array([0] * 15 + [1] * 15 + [2])                      # class 2: one train row
    x_tr = (rng.normal(size=(len(y_tr), 2)) + 3 * y_tr[:, None]).astype(np.float32)
    scores, _ = fit_baselines(x_tr, y_tr, {"test": (x_tr, y_tr)}, models=list(BASELINES), seed=0, n_classes=3)
    assert set(scores) == set(BASELINES) and 0 < scores["gradient_boosting"]["test/acc"] <= 1
    assert scores["logistic_regression"]["test/acc"] > 0.9
