"""The model zoo: every model on every modality it takes, without Ray."""

import pytest
import torch

from trainwise.components.models import build_model
from trainwise.components.training.export import load_model, save_model

VOCAB = 50
# (model, input_shape, vocab_size): each model on each modality it supports
CASES = [
    ("small_cnn", (1, 8, 8), None), ("cnn", (1, 8, 8), None), ("mlp", (1, 8, 8), None), ("cnn", (3, 28, 28), None),
    ("cnn", (1, 40), None), ("gru", (1, 40), None), ("transformer", (1, 40), None), ("mlp", (1, 40), None),
    ("mlp", (6,), None),
    ("gru", (16,), VOCAB), ("transformer", (16,), VOCAB), ("mlp", (16,), VOCAB),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Six test runs share 2 cores here: torch's spinning intra-op threads slow tiny ops 30x.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


IDS = [f"{m}-{'x'.join(map(str, s))}{'-text' if v else ''}" for m, s, v in CASES]


def _batch(shape, vocab, n=16, n_classes=3):
    g = torch.Generator().manual_seed(0)
    if vocab:
        x = torch.randint(2, vocab, (n, *shape), generator=g)
        x[:, shape[0] // 2:] = 0  # padding at the end, as the tokenizer writes it
    else:
        x = torch.rand(n, *shape, generator=g)
    return x, torch.arange(n) % n_classes


@pytest.mark.parametrize("name,shape,vocab", CASES, ids=IDS)
def test_forward_shape_and_one_step_lowers_the_loss(name, shape, vocab):
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape, n_classes=3, dropout=0.0, vocab_size=vocab)
    x, y = _batch(shape, vocab)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)  # a small plain gradient step
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    assert model(x).shape == (16, 3)
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    opt.step()
    after = torch.nn.functional.cross_entropy(model(x), y)
    assert after.item() < loss.item()


@pytest.mark.parametrize("name,shape,vocab", CASES, ids=IDS)
def test_save_load_round_trip_gives_the_same_outputs(name, shape, vocab, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape, n_classes=3, dropout=0.2, vocab_size=vocab)
    x, _ = _batch(shape, vocab)
    model.train()
    model(x)  # move batch-norm running stats away from their initial values
    model.eval()
    spec = {"model": name, "input_shape": list(shape), "classes": ["a", "b", "c"], "dropout": 0.2}
    if vocab:
        spec["tokenizer"] = {"kind": "words", "max_tokens": shape[0], "vocab": [f"w{i}" for i in range(vocab)]}
    save_model(tmp_path / "m", model.state_dict(), spec)
    loaded, loaded_spec = load_model(tmp_path / "m")  # torch.load(weights_only=True) inside
    assert loaded_spec == spec
    torch.testing.assert_close(loaded(x), model(x))


def test_cnn_depth_is_sized_from_the_input():
    blocks = lambda m: sum(1 for mod in m.modules() if type(mod).__name__ == "_ResidualBlock")  # noqa: E731
    assert blocks(build_model("cnn", input_shape=(1, 8, 8), n_classes=10)) == 2
    assert blocks(build_model("cnn", input_shape=(1, 28, 28), n_classes=10)) == 3
    assert blocks(build_model("cnn", input_shape=(1, 40), n_classes=10)) == 4


def test_models_refuse_modalities_they_do_not_take():
    with pytest.raises(ValueError, match="small_cnn needs"):
        build_model("small_cnn", input_shape=(1, 40), n_classes=3)
    with pytest.raises(ValueError, match="does not take text"):
        build_model("cnn", input_shape=(16,), n_classes=3, vocab_size=VOCAB)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*small_cnn"):
        build_model("resnet", input_shape=(1, 8, 8), n_classes=10)
