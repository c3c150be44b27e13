"""What storing decoded pixels in Parquet costs, per layout, against decoding the JPEG (issue 29).

clean stores each photo's pixels as ``fixed_size_list<uint8>[h*w*c]``. Parquet has no 8-bit
physical type and keeps a list with repetition/definition levels: each pixel becomes a 32-bit value
plus levels before compression. This measures, on real photos decoded to 224x224x3 (the
Face-Mask-Detection selection of ``benchmarks/photos_data.py``, or scikit-learn's sample photos
without it), CPU milliseconds a row to write and to read back each layout and its bytes a row,
beside a plain PIL decode of the same JPEGs (open -> convert -> resize), in one process:

- ``list_uint8``: the contract today (pyarrow's defaults: dictionary, statistics, snappy);
- ``list_uint8_no_stats``: the same without min/max statistics on the pixel column;
- ``fixed_binary``: the same bytes as ``fixed_size_binary[h*w*c]`` (what clean's staging file uses);
  a reader turns it back into the list zero-copy (cleaning._as_pixel_list);
- ``jpeg``: the encoded bytes as ingested (``binary``): what an encoded-payload contract would store.

    python -m benchmarks.pixel_storage [--photos 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchmarks._results import RESULTS, write_results

MIRROR = Path("/work/.mirror/chandrikadeb7+Face-Mask-Detection/repo")
SIDE = 224


def _jpegs(n: int, repo: Path) -> tuple[list[bytes], str]:
    with tempfile.TemporaryDirectory() as tmp:
        if repo.exists():
            from benchmarks.photos_data import prepare

            prepare(repo, Path(tmp), per_class=n // 2)
            source = "chandrikadeb7/Face-Mask-Detection (benchmarks/photos_data.py selection)"
        else:
            from benchmarks.photo_scale import make_photos

            make_photos(Path(tmp), n)
            source = "scikit-learn's sample photos, cropped and re-encoded (photo_scale.make_photos)"
        return [p.read_bytes() for p in sorted(Path(tmp).rglob("*.jpg"))], source


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--face-mask", type=Path, default=MIRROR)
    args = ap.parse_args()
    jpegs, source = _jpegs(args.photos, args.face_mask)
    n, width = len(jpegs), SIDE * SIDE * 3
    pixels = np.stack([_decode(d).reshape(-1) for d in jpegs])
    ids = pa.array([f"{k:06d}" for k in range(n)])
    tables = {
        "list_uint8": (pa.table({"id": ids, "image": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), width)}), {}),
        "list_uint8_no_stats": (None, {"write_statistics": ["id"]}),
        "fixed_binary": (pa.table({"id": ids, "image": pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), n, [None, pa.py_buffer(pixels)])}), {"use_dictionary": ["id"], "write_statistics": ["id"]}),
        "jpeg": (pa.table({"id": ids, "image": pa.array(jpegs, pa.binary())}), {"use_dictionary": ["id"],
                                                                             "write_statistics": ["id"]}),
    }
    tables["list_uint8_no_stats"] = (tables["list_uint8"][0], tables["list_uint8_no_stats"][1])
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.parquet"
        for _ in range(args.repeats):   # interleaved, the best of each: a shared machine's load varies
            t0 = time.process_time()
            for d in jpegs:
                _decode(d)
            decode = (time.process_time() - t0) * 1000 / n
            best.setdefault("plain_pil_decode", {"cpu_ms_per_row": decode})
            best["plain_pil_decode"]["cpu_ms_per_row"] = min(best["plain_pil_decode"]["cpu_ms_per_row"], decode)
            for name, (table, kw) in tables.items():
                t0 = time.process_time()
                pq.write_table(table, path, **kw)
                w = (time.process_time() - t0) * 1000 / n
                t0 = time.process_time()
                pq.read_table(path)
                r = (time.process_time() - t0) * 1000 / n
                row = best.setdefault(name, {"write_cpu_ms_per_row": w, "read_cpu_ms_per_row": r,
                                             "kib_per_row": os.path.getsize(path) / n / 1024})
                row["write_cpu_ms_per_row"] = min(row["write_cpu_ms_per_row"], w)
                row["read_cpu_ms_per_row"] = min(row["read_cpu_ms_per_row"], r)
    result = {"source": source, "photos": n, "side": SIDE,
              "layouts": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in best.items()}}
    for k, v in result["layouts"].items():
        print(f"{k:22} " + "  ".join(f"{kk} {vv}" for kk, vv in v.items()))
    write_results(RESULTS / "pixel_storage.json", result)


if __name__ == "__main__":
    main()
