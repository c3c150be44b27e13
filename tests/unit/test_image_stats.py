"""`clean.image_size: auto` (components/data/image_stats.py): a shape that follows the images."""

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from trainwise.components.data.image_stats import choose_shape, survey_images


def _png(h: int, w: int, exif_orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kw = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    Image.fromarray(np.full((h, w), 90, np.uint8)).save(buf, format="PNG", **kw)
    return buf.getvalue()


def _batches(blobs):
    return iter([pa.record_batch([pa.array(blobs, pa.binary())], names=["image"])])


def test_auto_size_ignores_degenerate_images_and_says_so():
    # 20 1x1 pixels (issue 28.6: they made `auto` store every image at 1x1) and 5 real 32x32 images
    survey = survey_images(_batches([_png(1, 1)] * 20 + [_png(32, 32)] * 5))
    assert survey.degenerate == 20 and survey.surveyed == 5
    size, channels, warnings = choose_shape(survey, image_size="auto", channels="auto", max_side=64)
    assert size == (32, 32) and channels == 1
    assert any("left out 20 image(s) with a side under 4 pixels" in w for w in warnings)


def test_only_degenerate_images_fall_back_to_max_side():
    size, _, warnings = choose_shape(survey_images(_batches([_png(1, 1)] * 3)), image_size="auto",
                                     channels="auto", max_side=48)
    assert size == (48, 48) and any("no other image was surveyed" in w for w in warnings)


def test_survey_reads_sizes_upright():
    survey = survey_images(_batches([_png(20, 40, exif_orientation=6)]))  # stored 20x40, shown 40x20
    assert survey.sizes == [(40, 20)]
