"""The whole `dvc repro` on real text with all-MiniLM-L6-v2: wall and peak memory per stage, and the
network against its own linear probe (issue 27, acceptance).

Data: the UCI "sentiment labelled sentences" (Kotzias et al., KDD 2015: Yelp, Amazon and IMDb
review sentences, 2 classes; github.com/kvrao/sentiment_analysis, a clone or bare git dir), every
distinct sentence (by ``text_key``), written as a CSV table (``text``, ``label``). A scratch copy of
the repository (what a fresh clone holds) with ``ingest.source: table``, ``train.backbone:
all_minilm_l6_v2`` and every other param at its params.yaml default runs one ``dvc repro``.

Per stage: wall (the stage's own cost meter, ``cost/wall_s``) and peak RSS, sampled every 0.25 s from
/proc over the stage's process tree (the ``python -m pipelines.<stage>`` process and every process
under it: the in-process Ray's GCS, raylet, dashboard and workers). Three figures: the largest single
process (RSS), the tree's RSS sum (an over-count: shared pages, the Ray object store's shared memory
and the libraries every Ray worker maps, are counted once per process that maps them) and the tree's
PSS sum (each shared page split among the processes mapping it: the tree's own footprint). Target:
every stage <= 4 GB, by the largest process and by the tree's PSS, and the network's test accuracy within 0.3 points of the linear probe's
(the baseline stage's logistic regression on the same embeddings) or above it.

    python -m benchmarks.text_pipeline --text-repo /work/.mirror/kvrao+sentiment_analysis/repo [--rows N]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import yaml

from benchmarks._project import scratch_project
from benchmarks._results import RESULTS, write_results

REPO = Path(__file__).resolve().parents[1]
LIMIT_MB = 4096
PROBE_MARGIN = 0.003


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _pss_mb(pid: int) -> float:
    """Proportional set size: each shared page divided among the processes that map it."""
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _stage_of(pid: int) -> str | None:
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return None
    if b"-m" in cmd:
        mod = cmd[cmd.index(b"-m") + 1] if cmd.index(b"-m") + 1 < len(cmd) else b""
        if mod.startswith(b"trainwise.pipelines."):
            return mod.decode().rpartition(".")[2]
    return None


class StageSampler(threading.Thread):
    """Peak RSS per stage: for each ``python -m pipelines.<stage>`` process under ``root_pid``, the
    largest process of its tree and the tree's sum, over the stage's life."""

    def __init__(self, root_pid: int, every: float = 0.25):
        super().__init__(daemon=True)
        self.root_pid, self.every = root_pid, every
        self.peaks: dict[str, dict] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            kids = _children()
            todo, stages = [self.root_pid], []
            while todo:
                p = todo.pop()
                s = _stage_of(p)
                if s is not None:
                    stages.append((s, p))
                    continue
                todo.extend(kids.get(p, []))
            for s, p in stages:
                tree, todo = [], [p]
                while todo:
                    q = todo.pop()
                    tree.append(q)
                    todo.extend(kids.get(q, []))
                rss = [_rss_mb(q) for q in tree]
                pk = self.peaks.setdefault(s, {"max_process_mb": 0.0, "tree_mb": 0.0, "tree_pss_mb": 0.0,
                                               "processes": 0})
                pk["max_process_mb"] = max(pk["max_process_mb"], max(rss))
                pk["tree_mb"] = max(pk["tree_mb"], sum(rss))
                pk["tree_pss_mb"] = max(pk["tree_pss_mb"], sum(_pss_mb(q) for q in tree))
                pk["processes"] = max(pk["processes"], len(tree))
            self.stop.wait(self.every)


def write_table(repo: Path, path: Path, n: int | None) -> dict:
    from benchmarks.near_duplicates_content import load_texts

    texts, labels, files = load_texts(repo, n or 10**9)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for t, y in zip(texts, labels):
            w.writerow([t, ["negative", "positive"][int(y)]])
    return {"rows": len(texts), "positive": int(labels.sum()),
            "by_source": {s: files.count(s) for s in sorted(set(files))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-repo", type=Path, required=True,
                    help="clone (or bare git dir) of github.com/kvrao/sentiment_analysis")
    ap.add_argument("--rows", type=int, default=None, help="at most this many sentences (default: all distinct)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch project (its path is printed)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="trainwise-text-bench-"))
    table = tmp / "sentences.csv"
    data = write_table(args.text_repo, table, args.rows)
    root, env = scratch_project({"ingest": {"source": "table", "path": str(table), "label_column": "label",
                                            "text_column": "text", "cache_dir": None},
                                 "train": {"backbone": "all_minilm_l6_v2"},
                                 "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}"}})
    print(f"{data['rows']} sentences -> {root}", flush=True)
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["dvc", "repro"], cwd=root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        sampler = StageSampler(proc.pid)
        sampler.start()
        log = proc.communicate()[0]
        total = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        (tmp / "repro.log").write_text(log)
        if proc.returncode:
            raise SystemExit(f"dvc repro failed (log: {tmp / 'repro.log'}):\n{log[-4000:]}")
        status = subprocess.run(["dvc", "status"], cwd=root, env=env, capture_output=True, text=True).stdout.strip()
        stages = list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])
        metrics = {s: json.loads((root / "metrics" / f"{s}.json").read_text())
                   for s in stages if (root / "metrics" / f"{s}.json").exists()}
        table_rows = {}
        for s in stages:
            pk = sampler.peaks.get(s, {})
            table_rows[s] = {"wall_s": round(metrics.get(s, {}).get("cost/wall_s", float("nan")), 1),
                             "peak_rss_mb": round(pk.get("max_process_mb", 0.0)),
                             "tree_rss_mb": round(pk.get("tree_mb", 0.0)),
                             "tree_pss_mb": round(pk.get("tree_pss_mb", 0.0)), "processes": pk.get("processes", 0)}
        ev, base = metrics["evaluate"], metrics["baseline"]
        net, probe = ev["test/acc"], base["baseline/linear_probe/test/acc"]
        train = metrics.get("train", {})
        split = metrics.get("split", {})
        result = {
            "data": {"source": "UCI 'sentiment labelled sentences' (Kotzias et al., KDD 2015), "
                               "github.com/kvrao/sentiment_analysis; every distinct sentence (text_key)", **data,
                     "split_rows": {s: split.get(f"split/{s}_rows") for s in ("train", "val", "test")}},
            "params": "params.yaml defaults; ingest.source table, train.backbone all_minilm_l6_v2",
            "dvc_repro_wall_s": round(total, 1), "dvc_status_after": status, "stages": table_rows,
            "max_stage_peak_rss_mb": max(r["peak_rss_mb"] for r in table_rows.values()),
            "max_stage_tree_pss_mb": max(r["tree_pss_mb"] for r in table_rows.values()),
            "network_test_acc": net, "linear_probe_test_acc": probe,
            "network_minus_probe_points": round(100 * (net - probe), 2),
            "best_baseline_test_acc": base.get("baseline/best/test/acc"),
            "train_epochs_run": train.get("train/epochs_run", train.get("train/epochs")),
            "verdict": json.loads((root / "models/evaluate/evaluation.json").read_text())["verdict"]["sentence"]
            if (root / "models/evaluate/evaluation.json").exists() else None,
        }
        result["targets"] = {
            "every stage <= 4 GB peak RSS (largest process)": result["max_stage_peak_rss_mb"] <= LIMIT_MB,
            "every stage's process tree <= 4 GB PSS": result["max_stage_tree_pss_mb"] <= LIMIT_MB,
            "network within 0.3 points of the linear probe or above": net >= probe - PROBE_MARGIN,
        }
        print(f"\ndvc repro of {data['rows']} real sentences with all-MiniLM-L6-v2 (params.yaml defaults), "
              f"{total:.0f} s; {os.cpu_count()} CPUs shared with other jobs, load {os.getloadavg()[0]:.1f}")
        print(f"{'stage':<10}{'wall s':>8}{'peak RSS MB':>13}{'tree RSS MB':>13}{'tree PSS MB':>13}{'procs':>7}")
        for s, r in table_rows.items():
            print(f"{s:<10}{r['wall_s']:>8}{r['peak_rss_mb']:>13}{r['tree_rss_mb']:>13}{r['tree_pss_mb']:>13}"
                  f"{r['processes']:>7}")
        print(f"network test/acc {net:.4f}, linear probe {probe:.4f} ({result['network_minus_probe_points']:+.2f} "
              f"points); verdict: {result['verdict']}")
        print(f"dvc status after: {status!r}")
        for k, ok in result["targets"].items():
            print(f"  {'PASS' if ok else 'MISS'}  {k}")
        print("->", write_results(RESULTS / "text_pipeline.json", result))
    finally:
        if args.keep:
            print("kept:", root, tmp)
        else:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
