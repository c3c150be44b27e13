"""Real photos, 2 classes: pretrained backbone vs from scratch vs a plain PyTorch script vs baselines.

Data: ~2,000 JPEGs of faces with / without a mask (benchmarks/photos_data.py prepares them from
the public repository chandrikadeb7/Face-Mask-Detection; they stay out of git). In one run,
side by side, each through the real pipeline (`dvc repro` in a scratch copy of this repo):

1. photo settings (docs/photos.md): `train.backbone: efficientnet_lite0` (ImageNet weights from a
   package), `backbone_mode: frozen`, tune on: ingest -> clean (auto: 224x224 RGB) -> split ->
   embed -> audit -> baseline (pixels + linear probe on embeddings) -> tune -> train -> evaluate
   -> report. Whole `dvc repro` wall time is the headline.
2. the same project, `backbone_mode: finetune` (whole network, Ray Train DDP; few epochs on CPU).
3. from scratch: `train.model: cnn` with the photo recipe (auto 64x64 RGB, flips + shifts,
   one-cycle LR, smoothed early stopping), tune off.
4. a plain ~60-line PyTorch script on project 3's very split (4 conv blocks + batch norm, AdamW,
   one-cycle, flips and crops, 25 epochs, 64x64 RGB), in this process.
Also: the label audit's figures with embeddings (1) and on pixels (3).

    python -m benchmarks.photos_data --repo /path/to/Face-Mask-Detection --out data/photos
    python -m benchmarks.photos --data data/photos [--finetune-epochs 1] [--keep]

The machine may be shared: numbers measured side by side in one run are what compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks._project import REPO, scratch_project
from benchmarks._results import write_results

PHOTO = {  # the documented photo settings (docs/photos.md): one params change from the demo + run knobs
    "ingest": {"source": "image_folder"},
    "train": {"backbone": "efficientnet_lite0", "pretrained": True, "backbone_mode": "frozen", "epochs": 30,
              "lr": 0.003, "patience": 5},
    "tune": {"num_samples": 4, "max_epochs": 20, "max_concurrent_trials": 2},
    "evaluate": {"attribution_samples": 4, "attribution_steps": 16},
    "mlflow": {"registered_model": "trainwise-photos"},
}
SCRATCH = {
    "ingest": {"source": "image_folder"},
    "train": {"model": "cnn", "epochs": 25, "lr": 0.003, "lr_schedule": "one_cycle", "hflip": True, "augment": 0.5,
              "patience": 8, "patience_smoothing": 0.5, "weight_decay": 0.0005},
    "tune": {"enabled": False},
    "evaluate": {"attribution_samples": 4, "attribution_steps": 16},
    "mlflow": {"registered_model": "trainwise-photos-scratch"},
}


def _merge(base: dict, data: Path) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    out["ingest"]["path"] = str(data.resolve())
    return out


def _repro(root: Path, env: dict, *targets: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(["dvc", "repro", *targets], cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (root / f"repro-{int(t0)}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"dvc repro {' '.join(targets)} failed in {root}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def _project_run(params: dict, data: Path, existing: Path | None) -> tuple[Path, dict, float]:
    """A scratch project after a full `dvc repro` with ``params``: run here, or one run before
    (launched the same way, timed by the files it left: see --photo-root)."""
    if existing is None:
        root, env = scratch_project(_merge(params, data))
        return root, env, _repro(root, env)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(PYTHONPATH=str(existing), PATH=f"{Path(os.sys.executable).parent}:{env.get('PATH', '')}")
    start, end = (existing / "repro.start", existing / "repro.end")
    if (existing / "repro.rc").read_text().strip() != "0":
        raise SystemExit(f"{existing}: its dvc repro failed (repro.log)")
    return existing, env, float(end.read_text()) - float(start.read_text())


def _metrics(root: Path, stage: str) -> dict:
    p = root / "metrics" / f"{stage}.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _stage_times(root: Path) -> dict:
    """Per stage: wall seconds and CPU seconds actually used (the meter's process-tree CPU time).
    On a shared machine wall time mostly measures the neighbours; CPU seconds used do not."""
    out = {}
    for p in sorted((root / "metrics").glob("*.json")):
        m = json.loads(p.read_text())
        if "cost/wall_s" in m:
            out[p.stem] = {"wall_s": round(m["cost/wall_s"], 1),
                           "cpu_s_used": round(m.get("cost/cpu_hours_used", 0.0) * 3600, 1)}
    return out


def _usd(root: Path) -> float:
    return round(sum(v.get("cost/usd", 0.0) for v in (json.loads(p.read_text()) for p in (root / "metrics").glob("*.json"))), 6)


def _set_params(root: Path, update: dict) -> None:
    import yaml

    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in update.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def plain_script(audit_dir: Path, *, epochs: int = 25, seed: int = 0, threads: int = 2) -> dict:
    """The plain script the issue measured against: what a practitioner writes in 60 lines."""
    import torch
    from torch import nn

    from trainwise.components.data.contract import read_manifest, read_table

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    h, w, c = read_manifest(audit_dir)["image_shape"]

    def load(split):
        t = read_table(audit_dir, columns=["label", "image"], filter_split=split)
        x = t.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, h, w, c)
        x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).float() / 255
        return (x - 0.5) / 0.25, torch.from_numpy(t.column("label").to_numpy().astype(np.int64))

    (xtr, ytr), (xva, yva), (xte, yte) = load("train"), load("val"), load("test")

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    net = nn.Sequential(block(c, 32), block(32, 64), block(64, 128), block(128, 256),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(256, int(ytr.max()) + 1))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
    steps = epochs * ((len(xtr) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)

    def augment(x):
        flip = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        pad = nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
        i, j = torch.randint(0, 9, (2,), generator=g).tolist()
        return pad[:, :, i:i + h, j:j + w]

    def acc(x, y):
        net.eval()
        with torch.no_grad():
            return float((torch.cat([net(b).argmax(1) for b in x.split(256)]) == y).float().mean())

    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xtr), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(augment(xtr[idx])), ytr[idx]).backward()
            opt.step()
            sched.step()
    wall = time.perf_counter() - t0
    return {"val/acc": acc(xva, yva), "test/acc": acc(xte, yte), "wall_s": round(wall, 1), "epochs": epochs}


def _row(name, acc, wall, usd, note=""):
    return {"setup": name, "test/acc": None if acc is None else round(float(acc), 4), "wall_s": round(wall, 1),
            "usd": usd, "note": note}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO / "data" / "photos")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the scratch projects")
    ap.add_argument("--photo-root", type=Path, help="a scratch project where `dvc repro` with PHOTO already ran "
                                                      "(its repro.start / repro.end give the wall time)")
    ap.add_argument("--scratch-root", type=Path, help="the same for SCRATCH")
    ap.add_argument("--plain-result", type=Path, help="JSON of plain_script() run on --scratch-root's data/audit")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "photos.json",
                    help="results file (a dry run on a subset writes elsewhere, e.g. /tmp/photos_small.json)")
    a = ap.parse_args()
    if not a.data.is_dir():
        raise SystemExit(f"{a.data}: not found; prepare it with python -m benchmarks.photos_data (see its docstring)")
    rows, result = [], {"data": str(a.data), "images": sum(1 for _ in a.data.rglob("*.jp*g")),
                        "machine": {"cpus": psutil.cpu_count(), "load_avg_at_start": os.getloadavg()}}

    # 1. photo settings: frozen backbone + head, whole pipeline
    root, env, wall = _project_run(PHOTO, a.data, a.photo_root)
    ev, bl, tr, au = (_metrics(root, s) for s in ("evaluate", "baseline", "train", "audit"))
    embed = _metrics(root, "embed")
    photo_times = _stage_times(root)  # before the fine-tune run below rewrites train / evaluate
    result["photo_settings"] = {"dvc_repro_s": round(wall, 1), "usd": _usd(root), "evaluate": ev, "baseline": bl,
                                "embed": embed, "audit": au, "train": tr}
    rows.append(_row("frozen efficientnet_lite0 + head (whole dvc repro, tune on)", ev.get("test/acc"), wall,
                     _usd(root), f"embed {embed.get('cost/wall_s', 0):.0f}s"))
    pix = max((k for k in bl if k.endswith("/test/acc") and "linear_probe" not in k and "/best/" not in k
               and "majority" not in k), key=lambda k: bl[k], default=None)
    if pix:
        rows.append(_row(f"best classical on pixels ({pix.split('/')[1]}, 224px block-averaged)", bl[pix],
                         bl.get(pix.replace("test/acc", "fit_s"), 0), bl.get(pix.replace("test/acc", "cost/usd"))))
    if "baseline/linear_probe/test/acc" in bl:
        rows.append(_row("linear probe: logistic regression on embeddings", bl["baseline/linear_probe/test/acc"],
                         bl.get("baseline/linear_probe/fit_s", 0), bl.get("baseline/linear_probe/cost/usd"),
                         "+ the embed stage"))

    # 2. fine-tune the whole backbone (same data, same embed/audit outputs)
    if a.finetune_epochs <= 0:
        rows.append(_row("fine-tuned efficientnet_lite0: not run (--finetune-epochs 0)", None, 0, None))
    else:
        _finetune(root, env, a, rows, result)
    photo_root = root

    # 3. from scratch with the photo recipe
    _scratch_and_plain(a, rows, result, photo_root, photo_times, au, wall)


def _finetune(root, env, a, rows, result) -> None:
    _set_params(root, {"train": {"backbone_mode": "finetune", "epochs": a.finetune_epochs, "lr": 0.0005,
                                 "batch_size": 32}, "tune": {"enabled": False}})
    wall_ft = _repro(root, env, "evaluate")
    ev_ft, tr_ft = _metrics(root, "evaluate"), _metrics(root, "train")
    result["finetune"] = {"repro_tune_train_evaluate_s": round(wall_ft, 1), "evaluate": ev_ft, "train": tr_ft}
    rows.append(_row(f"fine-tuned efficientnet_lite0 ({a.finetune_epochs} epoch(s), Ray Train DDP 2 workers)",
                     ev_ft.get("test/acc"), tr_ft.get("cost/wall_s", wall_ft), tr_ft.get("cost/usd"),
                     "train stage only"))


def _scratch_and_plain(a, rows, result, photo_root, photo_times, au, wall) -> None:
    root3, env3, wall3 = _project_run(SCRATCH, a.data, a.scratch_root)
    ev3, bl3, tr3, au3 = (_metrics(root3, s) for s in ("evaluate", "baseline", "train", "audit"))
    result["scratch"] = {"dvc_repro_s": round(wall3, 1), "usd": _usd(root3), "evaluate": ev3, "baseline": bl3,
                         "train": tr3, "audit": au3}
    rows.append(_row("from scratch: trainwise cnn, photo recipe (train stage)", ev3.get("test/acc"),
                     tr3.get("cost/wall_s", 0), tr3.get("cost/usd"), f"whole dvc repro {wall3:.0f}s"))
    pix3 = max((k for k in bl3 if k.endswith("/test/acc") and "/best/" not in k and "majority" not in k),
               key=lambda k: bl3[k], default=None)
    if pix3:
        rows.append(_row(f"best classical on pixels ({pix3.split('/')[1]}, 64px)", bl3[pix3],
                         bl3.get(pix3.replace("test/acc", "fit_s"), 0), bl3.get(pix3.replace("test/acc", "cost/usd"))))

    # 4. the plain script on project 3's split
    plain = json.loads(a.plain_result.read_text()) if a.plain_result else plain_script(root3 / "data" / "audit")
    result["plain_script"] = plain
    rows.append(_row("plain 60-line PyTorch script (same split, 64x64)", plain["test/acc"], plain["wall_s"],
                     round(plain["wall_s"] / 3600 * 2 * 0.048, 6), "in-process, 2 threads"))

    audit = {"with_embeddings": {k: v for k, v in au.items() if k.startswith("audit/")},
             "pixels_only": {k: v for k, v in au3.items() if k.startswith("audit/")}}
    times = {"photo_settings": photo_times, "scratch": _stage_times(root3)}
    result.update(rows=rows, audit=audit, stage_times=times, load_avg_at_end=os.getloadavg())
    for name, t in times.items():
        cpu = sum(v["cpu_s_used"] for v in t.values())
        print(f"{name}: stages {sum(v['wall_s'] for v in t.values()):.0f}s wall, {cpu:.0f} CPU-s used "
              f"(<= {cpu / 2:.0f}s + start-up on 2 idle cores): "
              + ", ".join(f"{k} {v['wall_s']:.0f}s/{v['cpu_s_used']:.0f}cpu-s" for k, v in t.items()))
    print(f"{'setup':<72}{'test/acc':>9}{'wall s':>9}{'usd':>11}")
    for r in rows:
        acc = "-" if r["test/acc"] is None else f"{r['test/acc']:.4f}"
        print(f"{r['setup']:<72}{acc:>9}{r['wall_s']:>9.1f}{(r['usd'] or 0):>11.6f}  {r['note']}")
    print(f"whole dvc repro with the photo settings: {wall:.0f}s (target <= 600 s on 2 cores)")
    print("label audit with embeddings:", json.dumps(audit["with_embeddings"]))
    print("label audit on pixels:      ", json.dumps(audit["pixels_only"]))
    out = write_results(a.out.resolve(), result)
    print(f"-> {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    if not a.keep:
        shutil.rmtree(photo_root, ignore_errors=True)
        shutil.rmtree(root3, ignore_errors=True)


if __name__ == "__main__":
    main()
