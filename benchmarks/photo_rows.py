"""Scale table: a real photo folder grown to N rows, `dvc repro train` with a frozen backbone, per stage.

Photos: chandrikadeb7/Face-Mask-Detection (faces with and without masks, MIT licence; the selection
of ``benchmarks/photos_data.py``: JPEGs, augmented copies left out, ~1,900 a class). Up to that many
rows are the photos themselves; beyond, each photo appears again as a variant (copy k: mirrored when
k is odd, centre crop of 1 - 0.04 k of each side, JPEG quality 90 - 3 k; deterministic), so a size
above the folder holds near-duplicates of it (which the split groups, as it should).

Each size runs in a fresh scratch project (the working tree's sources) with ``ingest.source:
image_folder``, ``clean.image_size: [224, 224]``, ``train.backbone: efficientnet_lite0`` (frozen: the
head trains on the embed stage's vectors), ``tune.enabled: false`` and MLflow off: ``dvc repro train``.
Per stage, from a probe that DVC's stage processes load (``sitecustomize``; it samples /proc every
0.25 s): wall (the stage's cost meter), the peak RSS of its largest process and of its whole process
tree (Ray workers included), and the bytes of its output folder. Then the disk of data/ + .dvc/cache
(hard links counted once) as a multiple of the JPEGs, and each stage's seconds per 1,000 rows by a
least-squares line over the sizes (the cost-vs-rows curve), with the fit's largest relative error.

    python -m benchmarks.photo_rows [--sizes 250 500 1000]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks._project import scratch_project
from benchmarks._results import RESULTS, write_results
from benchmarks.photo_scale import _du

MIRROR = Path("/work/.mirror/chandrikadeb7+Face-Mask-Detection/repo")
STAGES = ("ingest", "clean", "embed", "split", "audit", "tune", "train")
OUTS = {"ingest": "data/ingest", "clean": "data/clean", "embed": "data/embed", "split": "data/split",
        "audit": "data/audit", "tune": "models/tune", "train": "models/model"}
RSS_LIMIT_MB = 2048

PROBE = r'''
import atexit, json, os, threading, time
_cmd = open("/proc/self/cmdline", "rb").read().split(b"\0")
_stage = next((c.decode().rpartition(".")[2] for c in _cmd if c.startswith(b"trainwise.pipelines.")), None)
_out = os.environ.get("TRAINWISE_PROBE_DIR")
if _stage and _out and b"-m" in _cmd:
    _peak = {"single_kb": 0, "tree_kb": 0}
    def _tree():
        kids = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                kids.setdefault(ppid, []).append(int(d))
        todo, seen = [os.getpid()], []
        while todo:
            p = todo.pop()
            seen.append(p)
            todo += kids.get(p, [])
        return seen
    def _rss(pid):
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0
    def _sample():
        while True:
            sizes = [_rss(p) for p in _tree()]
            _peak["single_kb"] = max(_peak["single_kb"], max(sizes, default=0))
            _peak["tree_kb"] = max(_peak["tree_kb"], sum(sizes))
            time.sleep(0.25)
    threading.Thread(target=_sample, daemon=True).start()
    def _done():
        hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        _peak["single_kb"] = max(_peak["single_kb"], hwm)
        _peak["self_kb"] = hwm   # the stage's own process (embed's driver), apart from its Ray workers
        json.dump(_peak, open(os.path.join(_out, f"{_stage}.json"), "w"))
    atexit.register(_done)
'''


def _face_mask(repo: Path) -> list[tuple[str, bytes]]:
    """(class, JPEG bytes) of the folder's photos, as photos_data.py selects them, classes interleaved."""
    from benchmarks.photos_data import prepare

    with tempfile.TemporaryDirectory() as tmp:
        prepare(repo, Path(tmp), per_class=10**6)
        per = {c.name: sorted(c.iterdir()) for c in sorted(Path(tmp).iterdir())}
        n = min(len(v) for v in per.values())
        return [(c, per[c][k].read_bytes()) for k in range(n) for c in sorted(per)]


def _variant(data: bytes, k: int) -> bytes:
    from PIL import Image, ImageOps

    img = Image.open(io.BytesIO(data)).convert("RGB")
    if k % 2:
        img = ImageOps.mirror(img)
    w, h = img.size
    m = 0.04 * k / 2
    img = img.crop((int(w * m), int(h * m), w - int(w * m), h - int(h * m)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=max(50, 90 - 3 * k))
    return buf.getvalue()


def make_folder(out: Path, n: int, photos: list[tuple[str, bytes]]) -> int:
    """``n`` JPEGs in class folders: the photos, then variants of them; returns their bytes."""
    total = 0
    for i in range(n):
        k, (cls, data) = divmod(i, len(photos))[0], photos[i % len(photos)]
        body = data if k == 0 else _variant(data, k)
        path = out / cls / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        total += len(body)
    return total


def run_size(n: int, photos: list[tuple[str, bytes]], workdir: Path, target: str = "train") -> dict:
    folder = workdir / f"photos-{n}"
    jpeg_bytes = make_folder(folder, n, photos)
    root, env = scratch_project(prefix=f"trainwise-rows-{n}-")
    probe_dir, probe_out = workdir / f"probe-{n}", workdir / f"peaks-{n}"
    probe_dir.mkdir()
    probe_out.mkdir()
    (probe_dir / "sitecustomize.py").write_text(PROBE)
    try:
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["ingest"].update(source="image_folder", path=str(folder))
        params["clean"].update(image_size=[224, 224], channels=3)
        params["train"].update(backbone="efficientnet_lite0", backbone_mode="frozen", pretrained=True)
        params["tune"]["enabled"] = False
        params["mlflow"]["enabled"] = False
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**env, "PYTHONPATH": f"{probe_dir}:{env['PYTHONPATH']}", "TRAINWISE_PROBE_DIR": str(probe_out)}
        subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True, capture_output=True)
        t0 = time.perf_counter()
        proc = subprocess.run(["dvc", "repro", target], cwd=root, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"dvc repro {target} failed at {n} rows:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        stages = {}
        for s in STAGES[:STAGES.index(target) + 1]:
            m = root / "metrics" / f"{s}.json"
            metrics = json.loads(m.read_text()) if m.exists() else {}
            peak = json.loads((probe_out / f"{s}.json").read_text()) if (probe_out / f"{s}.json").exists() else {}
            stages[s] = {"wall_s": round(metrics.get("cost/wall_s", 0.0), 1),
                         "cpu_s": round(metrics.get("cost/cpu_hours_used", 0.0) * 3600, 1),
                         "peak_rss_mb": round(peak.get("single_kb", 0) / 1024, 1),
                         "peak_tree_rss_mb": round(peak.get("tree_kb", 0) / 1024, 1),
                         "peak_stage_process_rss_mb": round(peak.get("self_kb", 0) / 1024, 1),
                         "output_bytes": _du(root / OUTS[s])}
        clean = json.loads((root / "data" / "clean" / "manifest.json").read_text())
        both = _du(root / "data", root / ".dvc" / "cache")
        return {"photos": n, "rows": clean["rows"], "jpeg_bytes": jpeg_bytes, "repro_wall_s": round(wall, 1),
                "stages": stages, "data_bytes": _du(root / "data"), "cache_bytes": _du(root / ".dvc" / "cache"),
                "data_plus_cache_bytes": both, "x_jpegs": round(both / jpeg_bytes, 2),
                "largest_peak_rss_mb": max(v["peak_rss_mb"] for v in stages.values())}
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def fit(rows: list[dict]) -> dict:
    """Per stage: seconds per 1,000 rows and fixed seconds (least squares), largest relative error of the line."""
    n = np.array([r["rows"] for r in rows], float)
    out = {}
    for s in STAGES + ("repro",):
        out[s] = {}
        # wall time, and CPU seconds (the steadier on a shared machine: wall here is mostly waiting for a core)
        for kind in ("wall_s", "cpu_s"):
            if s == "repro" and kind == "cpu_s":
                continue
            y = np.array([r["repro_wall_s"] if s == "repro" else r["stages"][s][kind] for r in rows])
            slope, intercept = np.polyfit(n, y, 1) if len(rows) > 1 else (y[0] / n[0], 0.0)
            err = np.abs(slope * n + intercept - y) / np.maximum(y, 1e-9)
            tag = kind[:-2]
            out[s].update({f"{tag}_s_per_1k_rows": round(float(slope) * 1000, 2), f"{tag}_fixed_s": round(float(intercept), 1),
                           f"{tag}_max_rel_error": round(float(err.max()), 3),
                           **{f"{tag}_at_{k // 1000}k_s": round(float(slope * k + intercept), 0)
                              for k in (10_000, 50_000, 100_000)}})
    b = np.array([r["data_plus_cache_bytes"] for r in rows], float)
    j = np.array([r["jpeg_bytes"] for r in rows], float)
    bs, bi = np.polyfit(n, b, 1) if len(rows) > 1 else (b[0] / n[0], 0.0)
    js = float(np.polyfit(n, j, 1)[0]) if len(rows) > 1 else j[0] / n[0]
    out["disk"] = {"bytes_per_row": round(float(bs)), "jpeg_bytes_per_row": round(js),
                   **{f"x_jpegs_at_{k // 1000}k": round(float((bs * k + bi) / (js * k)), 2) for k in (10_000, 50_000, 100_000)}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    ap.add_argument("--face-mask", type=Path, default=MIRROR)
    ap.add_argument("--refit", action="store_true", help="refit the curve of the committed results file, run nothing")
    ap.add_argument("--until", default="train", choices=STAGES,
                    help="`dvc repro` this stage (and those before it) only; not train: results go to "
                         "photo_rows_until_<stage>.json, the scale table's file is left as it is")
    args = ap.parse_args()
    if args.refit:
        old = json.loads((RESULTS / "photo_rows.json").read_text())
        save(old["rows"], old["photos_in_folder"], provenance=old.get("provenance"))
        print(json.dumps(old["rows"] and fit(old["rows"]), indent=1))
        return
    photos = _face_mask(args.face_mask)
    rows = []
    with tempfile.TemporaryDirectory(prefix="trainwise-photo-rows-") as tmp:
        for n in sorted(args.sizes):
            rows.append(run_size(n, photos, Path(tmp), args.until))
            r = rows[-1]
            print(f"{n} photos ({r['jpeg_bytes'] / 2**20:.1f} MB): repro {r['repro_wall_s']} s, data+cache "
                  f"{r['x_jpegs']}x the JPEGs, largest peak RSS {r['largest_peak_rss_mb']} MB", flush=True)
            for s, v in r["stages"].items():
                print(f"    {s:7} wall {v['wall_s']:7.1f} s  cpu {v['cpu_s']:7.1f} s  peak RSS {v['peak_rss_mb']:7.1f} MB "
                      f"(tree {v['peak_tree_rss_mb']:7.1f})  output {v['output_bytes'] / 2**20:8.1f} MB", flush=True)
            if args.until == "train":
                save(rows, len(photos))   # after each size: a long run cut short keeps what it measured
            else:
                write_results(RESULTS / f"photo_rows_until_{args.until}.json",
                              {"until": args.until, "rows": rows, "rss_limit_mb": RSS_LIMIT_MB,
                               "largest_peak_rss_mb": max(r["largest_peak_rss_mb"] for r in rows)})
    if args.until == "train":
        print(json.dumps(fit(rows), indent=1))


def save(rows: list[dict], photos_in_folder: int, provenance: dict | None = None) -> None:
    """The results file; ``provenance``: the run's own, kept when only the curve is refitted."""
    extra = {"measured": provenance} if provenance else {}
    write_results(RESULTS / "photo_rows.json", {**extra,
        "source": "chandrikadeb7/Face-Mask-Detection (benchmarks/photos_data.py selection; variants beyond the "
                  "folder's size)", "photos_in_folder": photos_in_folder, "rows": rows, "curve": fit(rows),
        "rss_limit_mb": RSS_LIMIT_MB, "largest_peak_rss_mb": max(r["largest_peak_rss_mb"] for r in rows)})


if __name__ == "__main__":
    main()
