"""Stages at the speed of a plain script: each stage next to the loop a user would write by hand,
on the same photos (and texts), in one run (issue 29).

Everything runs in a scratch copy of this repository (the working tree), each stage and each plain
script in its own process, timed from process start to exit (imports included: that is what a user
waits for), one after the other on the same machine:

- **ingest + clean** (`python -m trainwise.pipelines.ingest`, then `trainwise.pipelines.clean`: read, check, decode,
  resize to 224x224x3, de-duplicate, write Parquet) vs a plain PIL loop over the same JPEGs with the
  same worker count (one process, as clean is): ``Image.open -> convert("RGB") -> resize -> numpy``.
- **embed** (`trainwise.pipelines.embed`, `train.backbone: efficientnet_lite0`, Ray Data with ``embed``'s
  replicas x ``cpus_per_replica`` threads) vs a plain ``torch.no_grad`` loop over the same backbone
  (``build_backbone``), the same stored pixels, ``torch.set_num_threads`` = the stage's CPUs, the same
  batch size.
- **text embed** (`trainwise.pipelines.embed`, `train.backbone: all_minilm_l6_v2`, on clean's texts) vs
  ``SentenceTransformer.encode`` on the same texts, same batch size and threads.
- **split and audit**: their wall time beyond their own compute. Inside the stage process the compute
  (grouping, split assignment, leakage checks; the audit's features, out-of-fold fits and decisions)
  is timed by wrapping those functions, and so is the reading and writing (the time spent producing
  each batch of ``iter_batches``, joins included, ``read_table`` / ``read_embeddings``, and
  ``DatasetWriter.write`` / ``close``): that part grows with the rows and with the payload's size,
  and is reported per 10k rows (target <= 5 s). The rest (interpreter and library start-up, the
  manifest; MLflow off) is the same at any size and is reported apart.

CPU seconds are reported beside wall time (the processes' own, or for Ray the stage's cost meter's
process tree): on a shared machine they are the steadier comparison.

Photos: real photos of faces from chandrikadeb7/Face-Mask-Detection (``benchmarks/photos_data.py``;
``--face-mask`` a clone or bare git dir), or without it scikit-learn's two sample photos cropped,
mirrored and re-encoded (``photo_scale.make_photos``). Texts: the UCI "sentiment labelled sentences"
(``--texts`` a clone of kvrao/sentiment_analysis), as ``near_duplicates_content`` reads them.

    python -m benchmarks.stage_speed [--photos 1000] [--texts 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks._project import scratch_project
from benchmarks._results import RESULTS, write_results

MIRROR = Path("/work/.mirror")
TARGET_SPEED, TARGET_OVERHEAD_PER_10K = 0.8, 5.0

# Runs a stage as DVC would, with its compute functions wrapped in timers; writes the timers and the
# process's peak RSS (VmHWM) to argv[1] at exit.
TIMED_STAGE = r"""
import atexit, functools, json, runpy, sys, time
t_start = time.perf_counter()
out, stage = sys.argv[1], sys.argv[2]
__import__(f"trainwise.pipelines.{stage}")  # the stage's imports: start-up, the same at any size
import_s = time.perf_counter() - t_start
timers = {}
io = {"read_s": 0.0, "write_s": 0.0}
depth = [0]   # only the outermost timer counts: a read inside find_groups is compute, a join's inner read is its own
def _timed(fn, add):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        outer = depth[0] == 0
        depth[0] += 1
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            depth[0] -= 1
            if outer:
                add(time.perf_counter() - t0)
    return wrapper
def _timed_iter(fn, add):  # time spent producing batches (reading, joining), not in the loop that uses them
    @functools.wraps(fn)
    def wrapper(*a, **k):
        it = fn(*a, **k)
        while True:
            outer = depth[0] == 0
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                return
            finally:
                depth[0] -= 1
                if outer:
                    add(time.perf_counter() - t0)
            yield b
    return wrapper
def add_to(store, key):
    def add(dt):
        store[key] = store.get(key, 0.0) + dt
    return add
COMPUTE = {
    "split": [("trainwise.components.data.splitting", n) for n in ("assign_splits", "assign_splits_given", "contamination",
                                                         "split_counts", "class_fraction_gap")]
             + [("trainwise.components.quality.duplicates", n) for n in ("cross_split_leaks", "keys_in_several_splits")]
             + [("trainwise.components.quality.content_groups", "find_groups")],
    "audit": [("trainwise.components.quality.audit", n) for n in ("embedding_features", "payload_features", "oof_probabilities",
                                                        "decide", "suspects_table", "inject_symmetric_noise")],
}
# Patched where they are defined, before runpy runs the stage afresh (its imports then find the timed ones).
for module, name in COMPUTE.get(stage, []):
    mod = __import__(module, fromlist=[name])
    setattr(mod, name, _timed(getattr(mod, name), add_to(timers, name)))
import trainwise.components.data.contract as contract
import trainwise.components.embedding.store as store
import trainwise.components.quality.duplicates as duplicates
contract.iter_batches = _timed_iter(contract.iter_batches, add_to(io, "read_s"))
for mod, name in ((contract, "read_table"), (contract, "read_manifest"), (store, "read_embeddings"),
                  (duplicates, "read_near_pairs")):
    setattr(mod, name, _timed(getattr(mod, name), add_to(io, "read_s")))
for name in ("write", "close"):
    setattr(contract.DatasetWriter, name, _timed(getattr(contract.DatasetWriter, name), add_to(io, "write_s")))
def done():
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    json.dump({"compute_s": timers, **io, "import_s": import_s, "peak_rss_bytes": hwm * 1024}, open(out, "w"))
atexit.register(done)
sys.argv = [f"pipelines/{stage}.py"]
runpy.run_module(f"trainwise.pipelines.{stage}", run_name="__main__", alter_sys=True)
"""

PLAIN_PIL = r"""
import sys, time
from pathlib import Path
import numpy as np
from PIL import Image
t0 = time.perf_counter()
files = sorted(p for p in Path(sys.argv[1]).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
for f in files:
    with Image.open(f) as im:
        a = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
print(len(files), time.perf_counter() - t0)
"""

# The same loop with the JPEG draft clean's decoder uses (components/data/images.py _draft): libjpeg
# decodes a photo at least twice the stored size at 1/2, 1/4 or 1/8 scale. The fairer baseline on
# folders of large photos; the target is against PLAIN_PIL.
PLAIN_PIL_DRAFT = PLAIN_PIL.replace("    with Image.open(f) as im:\n",
                                    "    with Image.open(f) as im:\n        im.draft(im.mode, (224, 224))\n")
assert PLAIN_PIL_DRAFT != PLAIN_PIL

PLAIN_TORCH = r"""
import sys, time
from pathlib import Path
t0 = time.perf_counter()
import numpy as np, torch
from PIL import Image
from trainwise.components.models.backbones import build_backbone
from trainwise.components.data.images import images_to_tensor
src, threads, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
files = sorted(p for p in Path(src).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
model = build_backbone("efficientnet_lite0", True, seed=0, root=".").eval()
n, t1 = 0, time.perf_counter()
with torch.no_grad():
    for k in range(0, len(files), batch):   # the files decoded, as embed decodes them (photos are stored as files)
        x = []
        for f in files[k:k + batch]:
            with Image.open(f) as im:
                x.append(np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)))
        model(images_to_tensor(np.stack(x)))
        n += len(x)
print(n, time.perf_counter() - t1)
"""

PLAIN_ST = r"""
import sys, time
t0 = time.perf_counter()
import pyarrow.parquet as pq, torch
from sentence_transformers import SentenceTransformer
from trainwise.components.data.contract import read_table
from trainwise.components.models.text_backbones import model_source
src, threads, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
texts = read_table(src, columns=["text"]).column("text").to_pylist()
model = SentenceTransformer(model_source("all_minilm_l6_v2"), device="cpu", local_files_only=True)
t1 = time.perf_counter()
model.encode(texts, batch_size=batch)
print(len(texts), time.perf_counter() - t1)
"""


def _run(root: Path, env: dict, args: list[str], what: str) -> tuple[float, float, str]:
    """(wall s, CPU s of the process and the children it waited for, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"stage_speed: {what} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def stage(root: Path, env: dict, name: str) -> dict:
    """One stage in its own process: wall, the stage's own cost/wall_s, compute timers, peak RSS."""
    timers = root / ".trainwise" / f"stage-speed-{name}.json"
    timers.parent.mkdir(exist_ok=True)
    wall, cpu, _ = _run(root, env, [sys.executable, "-c", TIMED_STAGE, str(timers), name], name)
    info = json.loads(timers.read_text())
    metrics = json.loads((root / "metrics" / f"{name}.json").read_text())
    # Ray's workers are not this process's children: the stage's cost meter samples its whole process tree
    tree_cpu = metrics.get("cost/cpu_hours_used", 0.0) * 3600
    return {"wall_s": round(wall, 2), "cpu_s": round(max(cpu, tree_cpu), 2),
            "read_s": round(info["read_s"], 2), "write_s": round(info["write_s"], 2),
            "stage_wall_s": round(metrics.get("cost/wall_s", 0.0), 2),
            "peak_rss_mb": round(info["peak_rss_bytes"] / 2**20, 1), "import_s": round(info["import_s"], 2),
            "compute_s": {k: round(v, 3) for k, v in info["compute_s"].items()}, "metrics": metrics}


def plain(root: Path, env: dict, script: str, *args, what: str) -> dict:
    wall, cpu, out = _run(root, env, [sys.executable, "-c", script, *map(str, args)], what)
    n, loop = out.split()[-2:]
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "loop_s": round(float(loop), 2), "rows": int(n)}


def _set_params(root: Path, **sections) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _photos(out: Path, n: int, face_mask: Path | None) -> str:
    if face_mask is not None and face_mask.exists():
        from benchmarks.photos_data import prepare

        prepare(face_mask, out, per_class=n // 2)
        return f"chandrikadeb7/Face-Mask-Detection, {n // 2} JPEGs a class (benchmarks/photos_data.py)"
    from benchmarks.photo_scale import make_photos

    make_photos(out, n)
    return "scikit-learn's sample photos: crops, mirrors, colour shifts, re-encodes (photo_scale.make_photos)"


def _texts(out: Path, n: int, repo: Path) -> str:
    import csv

    from benchmarks.near_duplicates_content import load_texts

    texts, labels, _ = load_texts(repo, n)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for t, y in zip(texts, labels):
            w.writerow([t, "positive" if y else "negative"])
    return "UCI sentiment labelled sentences (Kotzias et al., KDD 2015), via kvrao/sentiment_analysis"


def split_audit_part(tmp: Path, n: int, face_mask: Path | None, threads: int) -> dict:
    """Only split and audit's reading and writing (the stages before them run, untimed against anything)."""
    photos = tmp / "photos-sa"
    source = _photos(photos, n, face_mask)
    root, env = scratch_project(prefix="trainwise-speed-sa-")
    try:
        st = _photo_stages(root, env, photos, threads)
        rows = st["clean"]["metrics"]["clean/rows"]
        out = {"source": source, "rows": rows, "stages": {s: {k: v for k, v in st[s].items() if k != "metrics"}
                                                          for s in ("split", "audit")}}
        for s in ("split", "audit"):
            compute = sum(st[s]["compute_s"].values())
            io_s = st[s]["read_s"] + st[s]["write_s"]
            out[f"{s}_compute_s"] = round(compute, 2)
            out[f"{s}_io_s"] = round(io_s, 2)
            out[f"{s}_fixed_s"] = round(st[s]["wall_s"] - compute - io_s, 2)
            out[f"{s}_io_s_per_10k"] = round(io_s * 10_000 / max(rows, 1), 2)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _photo_stages(root: Path, env: dict, photos: Path, threads: int) -> dict:
    """The photos' project (224 px, frozen EfficientNet-Lite0, MLflow off) run stage by stage to audit."""
    _set_params(root, ingest={"source": "image_folder", "path": str(photos)},
                clean={"image_size": [224, 224], "channels": 3},
                train={"backbone": "efficientnet_lite0", "pretrained": True},
                embed={"cpus_per_replica": 1, "concurrency": threads}, ray={"num_cpus": threads},
                mlflow={"enabled": False})
    return {s: stage(root, env, s) for s in ("ingest", "clean", "embed", "split", "audit")}


def ingest_clean_part(tmp: Path, n: int, face_mask: Path | None, before: str | None) -> dict:
    """ingest + clean vs the plain PIL loop only (no embed: minutes on 2 cores), at ``before`` (a commit)
    and in the working tree, on the same photos in one run; the PIL loop runs before each side."""
    from benchmarks.split_speed import _tree_at

    photos = tmp / "photos-ic"
    source = _photos(photos, n, face_mask)
    n_files = sum(1 for p in photos.rglob("*") if p.is_file())
    sides = {"after": None} if before is None else {"before": _tree_at(before, tmp / "before-tree"), "after": None}
    out: dict = {"source": source, "photos": n_files, "before_commit": before}
    for side, src in sides.items():
        root, env = scratch_project(**({"src": src} if src else {}), prefix=f"trainwise-speed-ic-{side}-")
        try:
            _set_params(root, ingest={"source": "image_folder", "path": str(photos)},
                        clean={"image_size": [224, 224], "channels": 3},
                        train={"backbone": "efficientnet_lite0", "pretrained": True}, mlflow={"enabled": False})
            pil = plain(root, env, PLAIN_PIL, photos, what="plain PIL loop")
            pil_draft = plain(root, env, PLAIN_PIL_DRAFT, photos, what="plain PIL loop with draft")
            st = {s: stage(root, env, s) for s in ("ingest", "clean")}
            wall = st["ingest"]["wall_s"] + st["clean"]["wall_s"]
            cpu = st["ingest"]["cpu_s"] + st["clean"]["cpu_s"]
            out[side] = {"stages": {k: {kk: vv for kk, vv in v.items() if kk != "metrics"} for k, v in st.items()},
                         "plain_pil": pil, "clean_bytes": sum(f.stat().st_size for f in (root / "data" / "clean").iterdir()),
                         "ingest_clean_images_per_s": round(n_files / wall, 2),
                         "plain_pil_images_per_s": round(pil["rows"] / pil["wall_s"], 2),
                         "ingest_clean_ratio": round(pil["wall_s"] / wall, 3),
                         "ingest_clean_cpu_ratio": round(pil["cpu_s"] / cpu, 3),
                         "plain_pil_draft": pil_draft,
                         "plain_pil_draft_images_per_s": round(pil_draft["rows"] / pil_draft["wall_s"], 2),
                         "ingest_clean_draft_ratio": round(pil_draft["wall_s"] / wall, 3)}
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return out


def images_part(tmp: Path, n: int, face_mask: Path | None, threads: int) -> dict:
    photos = tmp / "photos"
    source = _photos(photos, n, face_mask)
    n_files = sum(1 for p in photos.rglob("*") if p.is_file())
    root, env = scratch_project(prefix="trainwise-speed-img-")
    try:
        st = _photo_stages(root, env, photos, threads)
        pil = plain(root, env, PLAIN_PIL, photos, what="plain PIL loop")
        batch = yaml.safe_load((root / "params.yaml").read_text())["embed"]["batch_size"]
        torch_loop = plain(root, env, PLAIN_TORCH, photos, threads, batch, what="plain torch loop")
        rows = st["clean"]["metrics"]["clean/rows"]
        ingest_clean = st["ingest"]["wall_s"] + st["clean"]["wall_s"]
        out = {"source": source, "photos": n_files, "rows": rows, "threads": threads, "batch_size": batch,
               "stages": {k: {kk: vv for kk, vv in v.items() if kk != "metrics"} for k, v in st.items()},
               "plain_pil": pil, "plain_torch": torch_loop,
               "ingest_clean_images_per_s": round(n_files / ingest_clean, 2),
               "plain_pil_images_per_s": round(pil["rows"] / pil["wall_s"], 2),
               "embed_images_per_s": round(rows / st["embed"]["wall_s"], 2),
               "plain_torch_images_per_s": round(torch_loop["rows"] / torch_loop["wall_s"], 2)}
        out["ingest_clean_ratio"] = round(out["ingest_clean_images_per_s"] / out["plain_pil_images_per_s"], 3)
        out["embed_ratio"] = round(out["embed_images_per_s"] / out["plain_torch_images_per_s"], 3)
        # by CPU seconds: steadier than wall time on a machine other jobs share
        out["ingest_clean_cpu_ratio"] = round(pil["cpu_s"] / (st["ingest"]["cpu_s"] + st["clean"]["cpu_s"]), 3)
        out["embed_cpu_ratio"] = round(torch_loop["cpu_s"] / st["embed"]["cpu_s"], 3)
        for s in ("split", "audit"):
            compute = sum(st[s]["compute_s"].values())
            io_s = st[s]["read_s"] + st[s]["write_s"]   # grows with the rows: reading, joining, writing
            out[f"{s}_compute_s"] = round(compute, 2)
            out[f"{s}_io_s"] = round(io_s, 2)
            out[f"{s}_fixed_s"] = round(st[s]["wall_s"] - compute - io_s, 2)  # start-up, imports, manifest
            out[f"{s}_io_s_per_10k"] = round(io_s * 10_000 / max(rows, 1), 2)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def text_part(tmp: Path, n: int, repo: Path, threads: int) -> dict:
    table = tmp / "texts.csv"
    source = _texts(table, n, repo)
    root, env = scratch_project(prefix="trainwise-speed-txt-")
    try:
        _set_params(root, ingest={"source": "table", "path": str(table), "label_column": "label",
                                  "text_column": "text"},
                    train={"backbone": "all_minilm_l6_v2", "pretrained": True},
                    embed={"cpus_per_replica": 1, "concurrency": threads}, ray={"num_cpus": threads},
                    mlflow={"enabled": False})
        for s in ("ingest", "clean"):
            stage(root, env, s)
        emb = stage(root, env, "embed")
        batch = yaml.safe_load((root / "params.yaml").read_text())["embed"]["batch_size"]
        st = plain(root, env, PLAIN_ST, root / "data" / "clean", threads, batch, what="SentenceTransformer.encode")
        rows = emb["metrics"]["embed/rows"]
        out = {"source": source, "rows": rows, "threads": threads, "batch_size": batch,
               "embed": {k: v for k, v in emb.items() if k != "metrics"}, "plain_encode": st,
               "embed_texts_per_s": round(rows / emb["wall_s"], 2),
               "plain_encode_texts_per_s": round(st["rows"] / st["wall_s"], 2)}
        out["text_embed_ratio"] = round(out["embed_texts_per_s"] / out["plain_encode_texts_per_s"], 3)
        out["text_embed_cpu_ratio"] = round(st["cpu_s"] / emb["cpu_s"], 3)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=1000)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPUs for embed and the plain loops")
    ap.add_argument("--face-mask", type=Path, default=MIRROR / "chandrikadeb7+Face-Mask-Detection" / "repo")
    ap.add_argument("--text-repo", type=Path, default=MIRROR / "kvrao+sentiment_analysis" / "repo")
    ap.add_argument("--parts", nargs="+", default=["images", "text"],
                    choices=["images", "text", "split_audit", "ingest_clean"],
                    help="split_audit: only split and audit's reading and writing; ingest_clean: only ingest + clean "
                         "vs the PIL loop, with --before side by side (each its own results file)")
    ap.add_argument("--before", default=None, help="ingest_clean: also measure this commit, in the same run")
    args = ap.parse_args()
    result: dict = {"targets": {"speed_ratio": TARGET_SPEED, "overhead_s_per_10k": TARGET_OVERHEAD_PER_10K}}
    with tempfile.TemporaryDirectory(prefix="trainwise-stage-speed-") as tmp:
        if "images" in args.parts:
            result["images"] = images_part(Path(tmp), args.photos, args.face_mask, args.threads)
        if "text" in args.parts:
            result["text"] = text_part(Path(tmp), args.texts, args.text_repo, args.threads)
        if "split_audit" in args.parts:
            result["split_audit"] = split_audit_part(Path(tmp), args.photos, args.face_mask, args.threads)
        if "ingest_clean" in args.parts:
            result["ingest_clean"] = ingest_clean_part(Path(tmp), args.photos, args.face_mask, args.before)
    print(json.dumps(result, indent=1))
    if "images" in result:
        r = result["images"]
        print(f"ingest+clean {r['ingest_clean_images_per_s']} img/s vs plain PIL {r['plain_pil_images_per_s']} img/s: "
              f"{r['ingest_clean_ratio']}x (target {TARGET_SPEED}x)")
        print(f"embed {r['embed_images_per_s']} img/s vs plain torch no_grad {r['plain_torch_images_per_s']} img/s: "
              f"{r['embed_ratio']}x")
        print(f"  by CPU seconds: ingest+clean {r['ingest_clean_cpu_ratio']}x, embed {r['embed_cpu_ratio']}x")
        for s in ("split", "audit"):
            print(f"{s}: wall {r['stages'][s]['wall_s']} s = compute {r[s + '_compute_s']} s + reading/writing "
                  f"{r[s + '_io_s']} s ({r[s + '_io_s_per_10k']} s per 10k rows, target <= {TARGET_OVERHEAD_PER_10K}) + "
                  f"start-up and the rest {r[s + '_fixed_s']} s")
    if "text" in result:
        r = result["text"]
        print(f"text embed {r['embed_texts_per_s']} texts/s vs SentenceTransformer.encode "
              f"{r['plain_encode_texts_per_s']} texts/s: {r['text_embed_ratio']}x (by CPU seconds "
              f"{r['text_embed_cpu_ratio']}x)")
    if "split_audit" in result:
        r = result["split_audit"]
        for s in ("split", "audit"):
            print(f"{s}: wall {r['stages'][s]['wall_s']} s = compute {r[s + '_compute_s']} s + reading/writing "
                  f"{r[s + '_io_s']} s ({r[s + '_io_s_per_10k']} s per 10k rows, target <= {TARGET_OVERHEAD_PER_10K}) + "
                  f"start-up and the rest {r[s + '_fixed_s']} s")
    for side in ("before", "after"):
        r = result.get("ingest_clean", {}).get(side)
        if r:
            print(f"{side} ({result['ingest_clean']['before_commit'] if side == 'before' else 'working tree'}): "
                  f"ingest+clean {r['ingest_clean_images_per_s']} img/s (ingest {r['stages']['ingest']['wall_s']} s, "
                  f"clean {r['stages']['clean']['wall_s']} s) vs plain PIL {r['plain_pil_images_per_s']} img/s: "
                  f"{r['ingest_clean_ratio']}x (target {TARGET_SPEED}x); by CPU seconds {r['ingest_clean_cpu_ratio']}x; "
                  f"data/clean {r['clean_bytes'] / 2**20:.1f} MB")
            print(f"    vs the plain PIL loop with JPEG draft {r['plain_pil_draft_images_per_s']} img/s (the decoder's own "
                  f"shortcut in the baseline too): {r['ingest_clean_draft_ratio']}x")
    name = {("split_audit",): "stage_speed_split_audit.json",
            ("ingest_clean",): "stage_speed_ingest_clean.json"}.get(tuple(args.parts), "stage_speed.json")
    write_results(RESULTS / name, result)


if __name__ == "__main__":
    main()
