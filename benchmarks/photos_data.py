"""Prepare the photo benchmark's data set: 2 classes of real photos, ~2,000 JPEGs, kept out of git.

Source: the public repository chandrikadeb7/Face-Mask-Detection (MIT licence), folder
``dataset/`` with ``with_mask/`` and ``without_mask/`` (about 4,100 photos of faces, a few
hundred of which are augmented copies of another photo, named ``<base>_<10 letters>.<ext>``).
This script keeps JPEGs only, drops the augmented copies (they would be near-duplicates
across splits), and takes up to ``--per-class`` files per class, chosen by a hash of the
file name (stable, no order bias), into ``OUT/<class>/``: an `image_folder` source.

    git clone --depth 1 https://github.com/chandrikadeb7/Face-Mask-Detection /tmp/fmd
    python -m benchmarks.photos_data --repo /tmp/fmd --out data/photos

``--repo`` may also be a bare git directory (files are read from its HEAD).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
from pathlib import Path

CLASSES = ("with_mask", "without_mask")
AUGMENTED = re.compile(r"_[A-Za-z0-9]{10}$")
JPEG = {".jpg", ".jpeg"}


def _list(repo: Path) -> list[tuple[str, str]]:
    """(path, blob id or '') of every file under dataset/."""
    if (repo / "dataset").is_dir():
        return [(str(p.relative_to(repo)), "") for p in sorted((repo / "dataset").rglob("*")) if p.is_file()]
    out = subprocess.run(["git", "--git-dir", str(repo), "ls-tree", "-r", "HEAD", "dataset"], check=True,
                         capture_output=True, text=True).stdout
    return [(line.split("\t", 1)[1], line.split()[2]) for line in out.splitlines()]


def _read(repo: Path, path: str, blob: str) -> bytes | None:
    if not blob:
        return (repo / path).read_bytes()
    proc = subprocess.run(["git", "--git-dir", str(repo), "cat-file", "blob", blob], capture_output=True)
    return proc.stdout if proc.returncode == 0 else None  # a partial mirror may lack a blob


def prepare(repo: Path, out: Path, per_class: int) -> dict[str, int]:
    files = _list(repo)
    counts = {}
    for cls in CLASSES:
        picked = [(p, b) for p, b in files if p.startswith(f"dataset/{cls}/") and Path(p).suffix.lower() in JPEG
                  and not AUGMENTED.search(Path(p).stem)]
        picked.sort(key=lambda pb: hashlib.sha256(pb[0].encode()).hexdigest())
        (out / cls).mkdir(parents=True, exist_ok=True)
        n = 0
        for path, blob in picked:
            if n >= per_class:
                break
            data = _read(repo, path, blob)
            if data is None:
                continue
            (out / cls / Path(path).name).write_bytes(data)
            n += 1
        counts[cls] = n
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, required=True, help="clone (or bare git dir) of chandrikadeb7/Face-Mask-Detection")
    ap.add_argument("--out", type=Path, default=Path("data/photos"))
    ap.add_argument("--per-class", type=int, default=1000)
    a = ap.parse_args()
    print(prepare(a.repo, a.out, a.per_class), "->", a.out)


if __name__ == "__main__":
    main()
