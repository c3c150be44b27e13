"""Render docs/benchmarks.md from benchmarks/results/*.json, and refresh the figures README.md quotes.

    python -m benchmarks.render_docs           # rewrite docs/benchmarks.md, refresh quoted figures
    python -m benchmarks.render_docs --check   # exit 1 (and say what) when anything is stale

Every figure in the docs comes from a results file, written by a benchmark script with its commit
and date (benchmarks/_results.py). docs/benchmarks.md is generated whole: one section per results
file (known or new: a file this script has never seen gets generic tables), its provenance beside
it. Prose elsewhere quotes a figure through a marker that names the file and the key:

    <!-- result: tune_asha_vs_fifo.json:trial_epochs_ratio -->0.41x
    <!-- result: tracking_overhead.json:process_wall_s.overhead pct -->2.3%

The number right after the marker is the file's value (``pct``: times 100), rounded to the decimals
written; this script rewrites it when the file changes and tests/unit/test_docs.py checks it.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "benchmarks.md"
QUOTING = ("README.md", "docs")  # where markers are looked for (docs/: every .md file)

# The key is bare (``rows.4.detect/f1``) or, when the file's keys hold spaces, double-quoted
# (``"correct_labels.weak auditor (near chance) / default.found"``).
MARKER = re.compile(r'<!-- result: (?P<file>[\w.-]+\.json):(?:"(?P<qkey>[^"]+)"|(?P<key>[^ "]+?))(?P<pct> pct)? -->'
                    r"(?P<num>[-+]?\d+(?:\.\d+)?)")


def marker_key(m: re.Match) -> str:
    return m.group("qkey") if m.group("qkey") is not None else m.group("key")

# What each known benchmark measures and against what (same run); a new file gets a generic line.
ABOUT = {
    "pipeline_stages": "Wall time of the demo `dvc repro` from a fresh copy of the repository, per stage, and "
                       "DVC's own share; the baseline is the training compute itself (train stage wall over time "
                       "in epochs, tune wall per trial-epoch).",
    "train_throughput": "The train stage's `fit` with one Ray Train worker against a plain single-process PyTorch "
                        "loop on the same model, data, batch and epochs, side by side in one run: in-epoch samples/s "
                        "and end-to-end fit wall time (start-up, per-epoch checkpoint and report included); and, "
                        "when run, test accuracy of the model zoo on digits and MNIST-1D.",
    "tune_asha_vs_fifo": "The same seeded sweep under ASHA and under FIFO (every trial runs all epochs), in the "
                         "same process: trial-epochs, CPU-seconds in epochs, best val/acc, and Tune's own overhead.",
    "tune_repeatability": "The demo's sweep (8 trials, 2 at a time, ASHA grace 2 / reduction 2, random search) run "
                          "repeatedly with Ray's ASHAScheduler and with trainwise's ordered ASHA, interleaved in one "
                          "process: how many different outcomes (trials' epochs, winner) the repeats gave, and the "
                          "sweep wall of each.",
    "tune_repeatability_optuna": "As tune_repeatability, with Optuna TPE (4 random start-up trials): Tune's own "
                                 "order against ordered ASHA + ordered TPE proposals.",
    "label_noise": "Digits with symmetric label noise injected into the train split: label-error detection "
                   "against the known flips, and test accuracy (true labels) with and without cleaning, against "
                   "the same model trained on noisy and on noise-free labels, same rows and seeds.",
    "tracking_overhead": "The train stage with MLflow tracking on against the same stage with `mlflow.enabled: "
                         "false`, runs interleaved.",
    "report_poll": "One `TorchTrainer.fit` with `ray.train_poll_s: 0.25` against Ray's default report polling, "
                   "in the same process.",
    "ingest_scale": "`image_folder` ingest of 5,000 and 50,000 small JPEGs (files/s and peak RSS) against a plain "
                    "Python loop that only reads the files, same files, same run.",
    "near_duplicates": "clean's near-duplicate search (KD-tree over 36 DCT coefficients, exact check on the full "
                       "embeddings) at 20k, 50k and 200k synthetic images with 2% planted near copies: wall time, "
                       "peak RSS, recall, against the brute force it replaced (run where it finishes in 10 min), "
                       "same embeddings, same run (`rows`, `target`, `candidates`). The split stage's grouping by "
                       "content (issue 26), each part with its own provenance: real photos with crop / mirror / "
                       "re-encode variants decoded at 64 and 224 px (`photos_64px`, `photos_224px`) and real "
                       "sentences with edited copies (`text`), against today's grouping on the same rows, with a "
                       "threshold sweep; 200,000 1,280-d embeddings through `EmbeddingIndex` (`embedding_scale`) "
                       "and its k-nearest candidates for the alignment check (`neighbours_scale`).",
    "photo_scale": "Disk of data/ + .dvc/cache after `dvc repro audit` of a 1,500-JPEG photo folder at 224x224x3, "
                   "as a multiple of the JPEGs: the commit before split and audit became extensions (payload "
                   "rewritten per stage, DVC copying into its cache) against this one, same photos, same run.",
    "table_scale": "ingest -> clean -> split of a generated 1M-row table (and 100k): wall time and peak RSS of each "
                   "stage as DVC runs it; the claim is the ratio of peak RSS at 1M to that at 100k, same run.",
}

# Sentences of interpretation, filled from the file: {{key.path}} is the value at that key (formatted
# like the tables, or {{key.path|pct}} as a percentage). A sentence whose keys are missing is left out,
# so a changed results file never leaves a stale number behind.
NOTES = {
    "tune_asha_vs_fifo": [
        "ASHA ran {{trial_epochs_ratio}}x of FIFO's trial-epochs; its best val/acc was {{best_val_acc_gap_points}} "
        "points behind FIFO's best ({{val_examples}} validation examples).",
        "On digits each trial pays far more to start its Ray Train worker group than it spends in epochs "
        "(`overhead_vs_epochs`), so sweeps pay off when epochs are long, not on this 8x8-pixel demo.",
    ],
    "report_poll": [
        "Fit wall time {{ray_default.fit_wall_s}} s with Ray's default polling vs {{trainwise.fit_wall_s}} s with "
        "`train_poll_s` {{trainwise.poll_s}}: {{speedup}}x.",
        "Ray Train v2 collects reports by polling the workers ({{ray_default.poll_s}} s by default) and a worker holds "
        "one report at a time, so every epoch shorter than the poll interval waited for it.",
    ],
    "tracking_overhead": [
        "Tracking added {{process_wall_s.overhead|pct}} to the process wall time and {{stage_wall_s.overhead|pct}} to "
        "the stage wall time ({{epochs}} epochs, {{repeats}} interleaved runs each).",
    ],
    "pipeline_stages": [
        "The demo `dvc repro` took {{dvc_repro_wall_s}} s (test/acc {{test/acc}}); DVC itself plus each stage's "
        "interpreter start took {{dvc_overhead_s}} s of it. On a dataset this small, start-up (Ray, the worker "
        "group, MLflow) dominates the train stage: {{train_wall_over_epochs}}x its time in epochs.",
    ],
    "ingest_scale": [
        "Peak RSS at the largest size was {{peak_rss_ratio}}x that at the smallest; the slowest ingest ran at "
        "{{worst_throughput_vs_baseline}}x the plain loop's files/s.",
    ],
    "near_duplicates": [
        "At {{target.rows}} rows the search took {{rows.2.new_wall_s}} s wall ({{rows.2.new_cpu_s}} s CPU, on one core) "
        "and {{rows.2.new_peak_rss_mb}} MB peak RSS, recall of the planted copies {{rows.2.new_recall}} (target: 60 s, "
        "1.5 GB, 0.99); at {{rows.1.rows}} rows it was {{rows.1.speedup}}x faster than the brute force, same pairs.",
        "Photos at 64 px: clean's pixel grouping kept the variants of {{photos_64px.before.together|pct}} of the photos "
        "together; embedding candidates (cosine >= {{photos_64px.after.min_cosine}}, {{photos_64px.after.neighbours}} "
        "nearest a row) confirmed by pixel alignment >= {{photos_64px.after.min_alignment}} kept "
        "{{photos_64px.after.together|pct}} together, merged {{photos_64px.after.merged|pct}} with another photo and left "
        "{{photos_64px.after.spanning|pct}} spanning splits (targets 99%, 2%, 1%; at 224 px "
        "{{photos_224px.after.together|pct}}, {{photos_224px.after.merged|pct}}, {{photos_224px.after.spanning|pct}}); "
        "cosine alone at {{photos_64px.cosine_only.at_previous_default.min_cosine}}: "
        "{{photos_64px.cosine_only.at_previous_default.together|pct}} together.",
        "Text ({{text.long_texts}} sentences of 6+ words with edited copies): equal normalised text kept "
        "{{text.before.together|pct}} together; character 5-gram Jaccard >= {{text.first_method.min_jaccard}} "
        "{{text.first_method.together|pct}} ({{text.first_method.spanning|pct}} spanning splits); word similarity >= "
        "{{text.after.min_text_similarity}} kept {{text.after.together|pct}}, merged {{text.after.merged|pct}}, "
        "{{text.after.spanning|pct}} spanning; LSH recall {{text.lsh.recall}}.",
        "EmbeddingIndex at {{embedding_scale.rows}} rows: {{embedding_scale.wall_s}} s wall ({{embedding_scale.cpu_s}} s "
        "CPU), {{embedding_scale.peak_rss_mb}} MB, recall {{embedding_scale.recall_in_sample}} against exact search on "
        "{{embedding_scale.sample_rows}} rows.",
    ],
    "cleaning_policies": [
        "Mean linear-probe test accuracy over every set and noise rate: no audit {{choice.mean_acc_over_sets_and_rates.none}}, "
        "flag {{choice.mean_acc_over_sets_and_rates.flag}}, drop {{choice.mean_acc_over_sets_and_rates.drop}}, relabel "
        "{{choice.mean_acc_over_sets_and_rates.relabel}}; the worst set and rate cost drop "
        "{{choice.worst_mean_points_vs_none.drop}} and relabel {{choice.worst_mean_points_vs_none.relabel}} points against "
        "no audit (mean over seeds); best mean: {{choice.best_policy}}.",
    ],
    "text_pipeline": [
        "The whole `dvc repro` of {{data.rows}} real sentences with all-MiniLM-L6-v2 took {{dvc_repro_wall_s}} s; the "
        "largest process of any stage peaked at {{max_stage_peak_rss_mb}} MB RSS and the largest stage process tree at "
        "{{max_stage_tree_pss_mb}} MB PSS (target 4,096 MB); the network scored {{network_test_acc}} on test against the "
        "linear probe's {{linear_probe_test_acc}} ({{network_minus_probe_points}} points).",
    ],
    "table_scale": [
        "Peak RSS at 1M rows over that at 100k: ingest {{rss_ratio.ingest}}x, clean {{rss_ratio.clean}}x, split "
        "{{rss_ratio.split}}x; the largest peak was {{largest_peak_rss_mb}} MB (targets 1.5x, 2 GB).",
    ],
}


def script_for(name: str) -> str:
    """The benchmark module that writes ``<name>.json`` (``tracking_overhead_60epochs`` ->
    ``tracking_overhead``): the longest ``_``-prefix of the name with a script beside this one."""
    parts = name.split("_")
    for n in range(len(parts), 0, -1):
        if (REPO / "benchmarks" / ("_".join(parts[:n]) + ".py")).exists():
            return "_".join(parts[:n])
    return name


def about(name: str) -> str:
    """What a benchmark measures: ours above, else the first paragraph of its script's docstring."""
    script = script_for(name)
    if name in ABOUT or script in ABOUT:  # a variant's own entry (tune_repeatability_optuna), else its script's
        return ABOUT.get(name, ABOUT.get(script))
    path = REPO / "benchmarks" / f"{script}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) if path.exists() else None
    if doc:
        return " ".join(doc.split("\n\n", 1)[0].split())
    return f"See `benchmarks/{script}.py` for what it measures."


def load_results(results_dir: Path = RESULTS) -> dict[str, dict]:
    """Every results file by stem, sorted; an unreadable one is an error naming it."""
    out = {}
    for p in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(p.read_text())
            out[p.stem] = data if isinstance(data, dict) else {"results": data}  # tolerate a bare list
        except json.JSONDecodeError as err:
            raise SystemExit(f"trainwise: error: {p}: not valid JSON ({err}); re-run python -m benchmarks.{p.stem}")
    return out


def lookup(obj, key: str):
    """The value at a dotted ``key``; keys may themselves hold dots or slashes (``test/acc``), list
    items are numbered. Raises KeyError naming the part that is missing."""
    if key == "":
        return obj
    if isinstance(obj, list):
        head, _, rest = key.partition(".")
        if head.isdigit() and int(head) < len(obj):
            return lookup(obj[int(head)], rest)
        raise KeyError(key)
    if isinstance(obj, dict):
        for k in sorted(obj, key=len, reverse=True):  # longest first: "a.b" before "a"
            if key == k:
                return obj[k]
            if key.startswith(k + "."):
                try:
                    return lookup(obj[k], key[len(k) + 1:])
                except KeyError:
                    continue
    raise KeyError(key)


def fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    if v is None:
        return "-"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, list) and len(v) <= 12 and all(isinstance(x, (bool, int, float, str)) for x in v))


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        elif _scalar(v):
            out.append((prefix + k, v))
    return out


def _records_table(records: list[dict]) -> str:
    cols: list[str] = []
    for r in records:
        for k, v in _flat(r):
            if k not in cols:
                cols.append(k)
    flat = [dict(_flat(r)) for r in records]
    return _table(cols, [[fmt(r.get(c, "")) if c in r else "" for c in cols] for r in flat])


def render_tables(result: dict) -> str:
    """Generic tables of one results file: its top-level figures, then one table per list of records
    or group of records (``rows``, ``stages``, ``asha``/``fifo``...)."""
    body = dict((k, v) for k, v in result.items() if k not in ("provenance",))
    parts = []
    top = [(k, v) for k, v in body.items() if _scalar(v)]
    groups = [(k, v) for k, v in body.items() if not _scalar(v)]
    if top:
        parts.append(_table(["figure", "value"], [[f"`{k}`", fmt(v)] for k, v in top]))
    for k, v in groups:
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            parts.append(f"`{k}`:\n\n" + _records_table(v))
        elif isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            recs = [{"": name, **x} for name, x in v.items()]
            parts.append(f"`{k}`:\n\n" + _records_table(recs))
        elif isinstance(v, dict) and v:
            rows = [[f"`{k}.{kk}`", fmt(vv)] for kk, vv in _flat(v)]
            nested = [(kk, vv) for kk, vv in v.items() if isinstance(vv, list) and vv and isinstance(vv[0], dict)]
            if rows:
                parts.append(_table(["figure", "value"], rows))
            for kk, vv in nested:
                parts.append(f"`{k}.{kk}`:\n\n" + _records_table(vv))
        elif isinstance(v, list):
            parts.append(f"`{k}`: {fmt(v[:50])}\n")
    return "\n".join(parts)


def fill_note(template: str, result: dict) -> str | None:
    try:
        def sub(m):
            key, _, mode = m.group(1).partition("|")
            v = lookup(result, key)
            if mode == "pct":
                return f"{100 * float(v):.1f}%"
            return f"{v:.3g}" if isinstance(v, float) else fmt(v)
        return re.sub(r"\{\{([^}]+)\}\}", sub, template)
    except (KeyError, TypeError, ValueError):
        return None


def provenance_of(result: dict) -> dict:
    """The ``provenance`` record of benchmarks/_results.py, or the same facts from a file that keeps
    them at the top level (``git_commit`` / ``commit``, ``date``, ``machine``)."""
    if result.get("provenance"):
        return result["provenance"]
    machine = result.get("machine")
    return {"commit": result.get("git_commit") or result.get("commit"), "date": result.get("date"),
            "command": result.get("command"),
            "machine": machine if isinstance(machine, dict) else {"note": machine} if machine else {}}


def provenance_line(name: str, result: dict) -> str:
    prov = provenance_of(result)
    where = f"`benchmarks/results/{name}.json`"
    if not prov.get("commit") or not prov.get("date"):
        return (f"{where}: **no commit or date recorded** (written before benchmarks recorded them); "
                f"re-run `python -m benchmarks.{script_for(name)}` on the current code before quoting it.")
    machine = prov.get("machine") or {}
    load = f", load average {machine['load_average_1m']}" if machine.get("load_average_1m") is not None else ""
    if machine.get("note"):
        load += f" ({machine['note']})"
    dirty = ""
    if prov.get("dirty"):
        paths = prov.get("dirty_paths") or []
        dirty = f" with uncommitted changes to {len(paths)} tracked file(s)" if paths else " with uncommitted changes"
    cpus = f"{machine['cpus']} CPUs" if machine.get("cpus") else "machine"
    return (f"{where}: commit `{prov['commit'][:10]}`{dirty}, {prov['date']}, "
            f"`{prov.get('command') or 'python -m benchmarks.' + script_for(name)}`; {cpus}{load}.")


def has_provenance(result: dict) -> bool:
    prov = provenance_of(result)
    return bool(prov.get("commit") and prov.get("date"))


def render(results: dict[str, dict]) -> str:
    current = [n for n in results if has_provenance(results[n])]
    older = [n for n in results if not has_provenance(results[n])]
    out = ["# Benchmarks\n",
           "<!-- Generated by `python -m benchmarks.render_docs` from benchmarks/results/*.json: do not edit by "
           "hand; re-run it after a benchmark. -->\n",
           "Each benchmark is `python -m benchmarks.<name>` (see `benchmarks/README.md`): it measures trainwise "
           "against a baseline in the same run, prints a table with the ratio, and writes "
           "`benchmarks/results/<name>.json` with the git commit, date and machine it ran on. Every table below "
           "is that file, rendered; the line under each heading says which file and which code. Timings depend "
           "on the machine and on what else ran on it (the development machine has 2 CPU cores, often shared): "
           "compare ratios measured side by side in one run, not absolute times across files.\n"]
    for name in current + older:
        if older and name == older[0]:
            out.append("## Older results\n\nThese files record no commit or date: they were written by an earlier "
                       "version of the benchmark scripts. Nothing in the README quotes them; re-run the benchmark to "
                       "bring them up to date.\n")
        r = results[name]
        level = "##" if name in current else "###"
        out.append(f"{level} {name}\n")
        out.append(provenance_line(name, r) + "\n")
        out.append(about(name) + "\n")
        notes = [s for s in (fill_note(t, r) for t in NOTES.get(script_for(name), [])) if s]
        if notes and name in current:
            out.append(" ".join(notes) + "\n")
        out.append(render_tables(r))
    return "\n".join(out).rstrip() + "\n"


def _decimals(num: str) -> int:
    return len(num.split(".", 1)[1]) if "." in num else 0


def check_marker(m: re.Match, results: dict[str, dict]) -> str | None:
    """None when the quoted number matches its file; else what is wrong."""
    name = m.group("file")[:-len(".json")]
    if name not in results:
        return f"{m.group(0)}: no benchmarks/results/{name}.json"
    if not has_provenance(results[name]):
        return f"{m.group(0)}: {name}.json records no commit/date; re-run python -m benchmarks.{script_for(name)} first"
    try:
        v = float(lookup(results[name], marker_key(m)))
    except (KeyError, TypeError, ValueError):
        return f"{m.group(0)}: {name}.json has no number at {marker_key(m)!r}"
    if m.group("pct"):
        v *= 100
    num = m.group("num")
    d = _decimals(num)
    if abs(float(num) - round(v, d)) > 0.5 * 10 ** -d + 1e-12:
        return f"{m.group(0)}: the file says {v:.{max(d, 2)}f}"
    return None


def refresh_markers(text: str, results: dict[str, dict]) -> str:
    """``text`` with every marker's number rewritten from its file (same decimals); markers that
    cannot be resolved are left for the check to report."""
    def sub(m):
        name = m.group("file")[:-len(".json")]
        try:
            v = float(lookup(results[name], marker_key(m)))
        except (KeyError, TypeError, ValueError):
            return m.group(0)
        if m.group("pct"):
            v *= 100
        d = _decimals(m.group("num"))
        return m.group(0)[:-len(m.group("num"))] + f"{v:.{d}f}"
    return MARKER.sub(sub, text)


def quoting_files(repo: Path = REPO) -> list[Path]:
    files = [repo / "README.md"] if (repo / "README.md").exists() else []
    return files + sorted(p for p in (repo / "docs").glob("*.md") if p.name != DOC.name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report stale docs instead of rewriting them")
    args = ap.parse_args(argv)
    results = load_results()
    stale = []
    doc = render(results)
    if not DOC.exists() or DOC.read_text() != doc:
        stale.append(str(DOC.relative_to(REPO)))
        if not args.check:
            DOC.parent.mkdir(exist_ok=True)
            DOC.write_text(doc)
    for p in quoting_files():
        text = p.read_text()
        new = refresh_markers(text, results)
        if new != text:
            stale.append(str(p.relative_to(REPO)))
            if not args.check:
                p.write_text(new)
        for m in MARKER.finditer(new):
            problem = check_marker(m, results)
            if problem:
                print(f"trainwise: error: {p.relative_to(REPO)}: {problem}", file=sys.stderr)
                return 1
    if args.check and stale:
        print("stale (run python -m benchmarks.render_docs): " + ", ".join(stale), file=sys.stderr)
        return 1
    print(("up to date: " if not stale else "rewrote: ") + (", ".join(stale) or str(DOC.relative_to(REPO))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
