"""Likely label errors: planted flips are found, each policy does what it says, the cap holds."""

import numpy as np
import pytest

from components.data.contract import DatasetWriter, SetAside, iter_batches, read_manifest, read_table
from components.data.sources import digits_source
from components.data.splitting import assign_splits
from components.quality.cleaning import CleanOptions, clean_dataset
from components.quality.label_issues import LabelIssueOptions, decide, detection_scores
from components.quality.noise import inject_symmetric_noise


def test_noise_flips_exactly_the_rate_of_eligible_rows_to_another_class():
    ids = [f"r{i}" for i in range(1000)]
    labels = np.arange(1000) % 10
    eligible = np.arange(1000) < 700
    noisy = inject_symmetric_noise(ids, labels, eligible=eligible, rate=0.2, n_classes=10, seed=0)
    flipped = noisy != labels
    assert flipped.sum() == 140 and not flipped[~eligible].any()
    assert ((noisy >= 0) & (noisy < 10)).all()
    assert len(set(noisy[flipped] - labels[flipped])) > 5  # spread over the other classes (symmetric)
    again = inject_symmetric_noise(ids, labels, eligible=eligible, rate=0.2, n_classes=10, seed=0)
    assert (again == noisy).all()


def test_decide_ranks_and_caps():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    proba = np.full((200, 4), 0.02)
    proba[np.arange(200), labels] = 0.94
    wrong = rng.choice(200, 40, replace=False)
    proba[wrong] = 0.02
    proba[wrong, (labels[wrong] + 1) % 4] = 0.94
    d = decide(labels, proba, policy="flag", max_fraction=1.0)
    assert set(d.found.tolist()) == set(wrong.tolist())
    capped = decide(labels, proba, policy="flag", max_fraction=0.1)
    assert len(capped.acted) == 20 and capped.capped == 20
    assert capped.counts() == {"found": 40, "flagged": 20, "touched": 20, "over_cap": 20}
    assert (capped.predicted[wrong] == (labels[wrong] + 1) % 4).all()


def test_detection_scores():
    s = detection_scores(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))
    assert s == {"precision": 0.5, "recall": 0.5, "f1": 0.5}


@pytest.fixture(scope="module")
def digits_ingest(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    src = digits_source()
    with DatasetWriter(root / "ingest", classes=src.classes) as w:
        for b in src.batches:
            w.write(b)
        w.close(rows_in=w.rows, set_aside=SetAside())
    return root / "ingest"


def _clean(ingest, out, **options):
    with DatasetWriter(out, classes=[str(k) for k in range(10)]) as w:
        st = clean_dataset(iter_batches(ingest), w, n_classes=10, modality="image", options=CleanOptions(**options))
        w.close(rows_in=st["rows_in"], set_aside=st["set_aside"], extra=st["extra"])
    return st, read_manifest(out), read_table(out)


@pytest.mark.slow
def test_planted_flips_are_found_and_each_policy_does_what_it_says(ray_session, digits_ingest, tmp_path):
    # drop: flips found (recall asserted), set aside with a reason, counts add up
    st, m, t = _clean(digits_ingest, tmp_path / "drop", noise_rate=0.2,
                      label_issues=LabelIssueOptions(policy="drop", workers=2))
    assert st["metrics"]["clean/noise/flipped"] == m["noise"]["flipped"] > 200
    assert st["metrics"]["clean/label_issues/recall"] >= 0.85
    assert st["metrics"]["clean/label_issues/precision"] >= 0.85
    dropped = m["set_aside"]["label_issue"]
    assert dropped == m["label_issues"]["dropped"] > 200
    assert m["rows_in"] == 1797 == m["rows"] + sum(m["set_aside"].values())
    # the true label is a column, and it is what the noise was measured against
    flips_left = int((t.column("label").to_numpy() != t.column("true_label").to_numpy()).sum())
    assert flips_left <= 0.15 * m["noise"]["flipped"]
    # only rows split will put in train were flipped
    split = np.array(assign_splits(t.column("group").to_pylist(), fractions={"train": 0.7, "val": 0.15,
                                                                             "test": 0.15}, seed=0))
    differs = t.column("label").to_numpy() != t.column("true_label").to_numpy()
    assert not differs[split != "train"].any()
    suspects = st["suspects"]
    assert len(suspects) == 50 and suspects[0]["given_label"] != suspects[0]["predicted_label"]
    assert suspects[0]["given_label_prob"] <= suspects[-1]["given_label_prob"]  # least self-confident first

    # flag: every row kept, flagged rows marked, labels untouched
    st, m, t = _clean(digits_ingest, tmp_path / "flag", noise_rate=0.2,
                      label_issues=LabelIssueOptions(policy="flag", model="knn"))  # knn: faster, same job
    assert m["rows"] == 1797 and "label_issue" not in m["set_aside"]
    flagged = t.column("label_issue").to_numpy(zero_copy_only=False)
    assert flagged.sum() == m["label_issues"]["flagged"] > 200
    wrong = t.column("label").to_numpy() != t.column("true_label").to_numpy()
    assert wrong.sum() == m["noise"]["flipped"]  # labels untouched: every flip still there
    assert wrong[flagged].mean() > 0.85  # and the flags point at them

    # relabel: every row kept, flagged rows get the prediction, the given label stays in a column
    st, m, t = _clean(digits_ingest, tmp_path / "relabel", noise_rate=0.2,
                      label_issues=LabelIssueOptions(policy="relabel", workers=2))
    issue = t.column("label_issue").to_numpy(zero_copy_only=False)
    label, given, true = (t.column(c).to_numpy() for c in ("label", "given_label", "true_label"))
    assert m["rows"] == 1797 and m["label_issues"]["relabeled"] == issue.sum()
    assert (label[~issue] == given[~issue]).all() and (label[issue] != given[issue]).all()
    assert (label[issue] == true[issue]).mean() > 0.9  # the prediction is mostly the true label

    # the cap: at most max_fraction of rows touched, the rest reported as over the cap
    st, m, t = _clean(digits_ingest, tmp_path / "cap", noise_rate=0.2,
                      label_issues=LabelIssueOptions(policy="drop", max_fraction=0.05, model="knn"))
    assert m["set_aside"]["label_issue"] == int(0.05 * 1797)
    assert m["label_issues"]["over_cap"] == m["label_issues"]["found"] - int(0.05 * 1797) > 0
