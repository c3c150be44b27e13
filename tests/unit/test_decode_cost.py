"""What clean pays per photo beyond the plain decode (issue 29, "stages at the speed of a plain
script"): a large JPEG is decoded at a reduced scale, the shape survey reads only headers when
colour decides nothing, and ingest stores the files as they are. Each test fails on the code
before these changes."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from trainwise.components.data.image_stats import choose_shape, survey_images
from trainwise.components.data.images import _draft, decode_image
from trainwise.components.data.sources import ingest, open_source
from trainwise.components.quality.duplicates import NearDuplicateIndex


def _photo(w: int, h: int, *, orientation: int | None = None, fmt: str = "JPEG") -> bytes:
    """A smooth colour photo (gradients and a disc): what libjpeg's DCT scaling keeps well."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    disc = ((x - w * 0.6) ** 2 + (y - h * 0.4) ** 2) < (min(w, h) * 0.25) ** 2
    rgb = np.stack([255 * x / w, 255 * y / h, np.where(disc, 230, 40) + 0 * x], -1).astype(np.uint8)
    buf = io.BytesIO()
    kw = {"quality": 92} if fmt == "JPEG" else {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _full_decode(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """The plain loop: every pixel decoded, then resized (what decode_image did before the draft)."""
    from PIL import ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
        return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_that_still_covers_the_stored_size():
    data = _photo(1600, 1200)
    with Image.open(io.BytesIO(data)) as img:
        _draft(img, 224, 224)
        assert img.size == (400, 300)          # 1/4 scale: the largest that keeps both sides >= 224
    with Image.open(io.BytesIO(_photo(440, 1200))) as img:
        _draft(img, 224, 224)
        assert img.size == (440, 1200)         # under twice the stored width: decoded whole
    with Image.open(io.BytesIO(_photo(1600, 1200, fmt="PNG"))) as img:
        _draft(img, 224, 224)
        assert img.size == (1600, 1200)        # PNG has no reduced decode
    fast = decode_image(data, size=(224, 224), channels=3)
    assert fast.shape == (224, 224, 3)
    # the DCT-scaled decode is the same picture: within a few levels of decoding every pixel
    assert np.abs(fast.astype(int) - _full_decode(data, (224, 224))).mean() < 3.0


def test_the_reduced_scale_is_asked_in_the_files_own_orientation():
    # stored 1800 wide x 600 high, EXIF 6: shown 600 wide x 1800 high, stored as 300 high x 100 wide.
    # Asked in the shown orientation (100 wide, 300 high) the draft would pick 1/2 of a side it can
    # take 1/4 of (or, asked the other way round for a stored photo, too small a scale: sides < 300).
    data = _photo(1800, 600, orientation=6)
    with Image.open(io.BytesIO(data)) as img:
        _draft(img, 100, 300)
        assert img.size == (450, 150)          # 1/4: the stored width 1800 -> 450 >= 300, 600 -> 150 >= 100
    out = decode_image(data, size=(300, 100), channels=3)
    assert out.shape == (300, 100, 3)
    assert np.abs(out.astype(int) - _full_decode(data, (300, 100))).mean() < 3.0


def _batches(blobs):
    return iter([pa.record_batch([pa.array(blobs, pa.binary())], names=["image"])])


def test_the_survey_reads_headers_only_when_colour_decides_nothing():
    whole = _photo(640, 480)
    truncated = whole[: len(whole) // 3]      # the header is intact, the pixels are not
    sizes_only = survey_images(_batches([whole, truncated]), colour=False)
    assert sizes_only.surveyed == 2 and sizes_only.sizes == [(480, 640)] * 2   # nothing was decoded
    assert sizes_only.colour == 0 and not sizes_only.colour_surveyed
    full = survey_images(_batches([whole, truncated]))
    assert full.colour_surveyed and full.surveyed == 1 and full.colour == 1   # decoding stops at the cut
    # with a backbone the channels are 3 whatever the colour; without one `auto` needs the survey
    assert choose_shape(sizes_only, image_size="auto", channels="auto", max_side=64,
                        backbone_input=(224, 224))[:2] == ((224, 224), 3)
    with pytest.raises(ValueError, match="colour survey"):
        choose_shape(sizes_only, image_size="auto", channels="auto", max_side=64)


def test_ingest_stores_the_files_as_they_are(tmp_path):
    root = tmp_path / "src"
    for i in range(6):
        p = root / "ab"[i % 2] / f"{i}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_photo(64 + i, 48))
    src = open_source("image_folder", path=str(root), max_image_pixels=89_478_485, max_file_bytes=8 << 20)
    ingest(src, tmp_path / "out", shard_rows=1000, shard_bytes=1 << 20, progress=False)
    shards = sorted((tmp_path / "out").glob("*.parquet"))
    assert shards
    for shard in shards:
        meta = pq.ParquetFile(shard).metadata
        for g in range(meta.num_row_groups):
            col = meta.row_group(g).column(pq.ParquetFile(shard).schema_arrow.get_field_index("image"))
            # JPEG bytes are compressed already: snappy again costs CPU for nothing, and a dictionary
            # of files that are never alike costs a hash of every byte
            assert col.compression == "UNCOMPRESSED"
            assert "RLE_DICTIONARY" not in col.encodings and not col.has_dictionary_page


def test_the_near_duplicate_index_flushes_by_a_running_count():
    index = NearDuplicateIndex(radius=0.1)
    rng = np.random.default_rng(0)
    for v in rng.normal(size=(4097, 256)).astype(np.float32):
        index.add(v)
    assert index.rows == 4097 and len(index._reduced) == 1 and len(index._pending) == 1
    assert index._pending_rows == 1
