"""The one image decoder (components/data/images.py): what it does to pixels that Pillow's plain
``convert`` gets wrong, and what it refuses."""

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, UnidentifiedImageError

from trainwise.components.data.contract import DatasetWriter, content_id
from trainwise.components.data.images import ANIMATED_FIRST_FRAME, EXIF_ROTATED, SCALED_16BIT, decode_image
from trainwise.components.data.sources import RAW_IMAGE_SCHEMA
from trainwise.components.quality.cleaning import clean_dataset
from trainwise.components.serving.preprocess import PreprocessError, preprocess_image
from tests.demo_data import clean_options


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _sideways_photo() -> bytes:
    """A 4-row x 8-column image stored as a phone stores a portrait photo: pixels on their side
    and EXIF orientation 6 ('rotate 90 degrees clockwise to view'). Upright it is 8 rows x 4
    columns whose top half is white."""
    stored = np.zeros((4, 8), np.uint8)
    stored[:, :4] = 255                     # left half of the stored pixels: the top once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    return _png(Image.fromarray(stored, "L"), exif=exif.tobytes())


def test_exif_orientation_is_applied():
    notes: list[str] = []
    upright = decode_image(_sideways_photo(), size=(8, 4), channels=1, notes=notes)[..., 0]
    assert upright[:4].min() == 255 and upright[4:].max() == 0   # white on top, black below
    assert notes == [EXIF_ROTATED]


def test_predict_sees_the_photo_upright_as_clean_did():
    spec = {"image_shape": [8, 4, 1], "input_shape": [1, 8, 4]}
    np.testing.assert_array_equal(preprocess_image(_sideways_photo(), spec=spec),
                                  decode_image(_sideways_photo(), size=(8, 4), channels=1))
    assert preprocess_image(_sideways_photo(), spec=spec)[:4].min() == 255


def test_16bit_png_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    data = _png(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    notes: list[str] = []
    out = decode_image(data, size=(8, 8), channels=1, notes=notes)[..., 0]
    np.testing.assert_allclose(out.astype(float), ramp / 257.0, atol=0.51)   # plain convert("L"): 255 almost everywhere
    assert out.min() == 0 and out.max() == 255 and 120 < out.mean() < 135
    assert notes == [SCALED_16BIT]


def _animated_gif() -> bytes:
    frames = [Image.fromarray(np.full((6, 6), v, np.uint8), "L") for v in (200, 30, 90)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def test_animated_image_gives_its_first_frame_and_says_so():
    notes: list[str] = []
    out = decode_image(_animated_gif(), size=(6, 6), channels=1, notes=notes)
    assert abs(int(out.mean()) - 200) <= 2
    assert notes == [ANIMATED_FIRST_FRAME]


def test_formats_ingest_refuses_are_refused():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="TIFF")
    with pytest.raises(UnidentifiedImageError):
        decode_image(buf.getvalue(), size=(8, 8), channels=1)
    with pytest.raises(PreprocessError, match="not a format ingest accepts"):
        preprocess_image(buf.getvalue(), spec={"image_shape": [8, 8, 1]})


def test_clean_counts_the_decode_notes(tmp_path):
    rng = np.random.default_rng(1)
    plain = _png(Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)))
    rows = [(plain, "a/plain.png"), (_animated_gif(), "a/anim.gif"), (_sideways_photo(), "b/phone.png"),
            (_png(Image.fromarray(np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8))), "b/16bit.png")]
    table = pa.table({"id": [content_id(p, s) for p, s in rows], "label": [0, 0, 1, 1],
                      "image": [p for p, _ in rows], "source": [s for _, s in rows]}, schema=RAW_IMAGE_SCHEMA)
    with DatasetWriter(tmp_path / "clean", classes=["a", "b"]) as w:
        stats = clean_dataset(iter(table.to_batches()), w, n_classes=2, modality="image", options=clean_options())
        m = w.close(rows_in=stats["rows_in"], set_aside=stats["set_aside"], extra=stats["extra"])
    assert m["rows"] == 4
    assert m["decode_notes"] == {EXIF_ROTATED: 1, SCALED_16BIT: 1, ANIMATED_FIRST_FRAME: 1}
    assert stats["metrics"]["clean/decode/animated_first_frame"] == 1
