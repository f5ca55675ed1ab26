"""What each marked block of a documentation page must hold, computed from files under ``reports/``.

<!-- table: reports/X -->          results: the runs archived in reports/X/runs
<!-- table: reports/X A B -->      the same, only the experiments named A and B (a headline table)
<!-- lowest: reports/X A B -->     a prose claim kept true: which of A and B has the lowest mean test error
<!-- rule: reports/R -->           a prose claim kept true: what the selection rule in R/rule.yaml read,
                                   checked against the validation errors it measured (R/validation.json)
<!-- benchmark: reports/Y.json --> performance: one throughput JSON (rows, ratios, FLOPs),
                                   or several, side by side in ms per step
<!-- scatter: reports/Y.json ... --> how far the benchmark rounds are apart, per row
<!-- excerpt: reports/Z.md -->     a study: the first table of the report the study wrote
<!-- mismatch: reports/M -->       the class-mismatch study: error per method and unknown share, and the
                                   default the validation errors choose (``mismatch``)
<!-- detection: reports/M -->      the same study: how well each score finds the pool's unknown images
<!-- versions: reports/V.json -->  benchmarks/versions.py: each row, an earlier version against this one
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from . import ledger, mismatch
from .results import difference_text, error_text, find_runs, interval, model_text, summarize

KINDS = ("table", "lowest", "rule", "benchmark", "scatter", "figures", "excerpt", "versions", "mismatch", "detection")


def table_rows(report_dir: Path, experiments: list[str] | None = None) -> list[dict]:
    """The rows a results table shows: only the ``experiments`` named, when given (their paired
    differences are still computed over every run)."""
    rows = summarize(find_runs([report_dir / "runs"]))
    if experiments:
        missing = sorted(set(experiments) - {row["experiment"] for row in rows})
        if missing:
            raise ValueError(f"{report_dir} has no experiment {', '.join(missing)}")
        rows = [row for row in rows if row["experiment"] in experiments]
    return rows


def lowest_row(report_dir: Path, experiments: list[str] | None = None) -> str:
    """A prose claim the checker keeps true: which of the named rows has the lowest mean test error."""
    row = min(table_rows(report_dir, experiments), key=lambda r: r["error_mean"])
    bounds = interval(row["error_mean"], row["error_std"], len(row["errors"]))
    within = f", 95 % interval of the mean [{bounds[0]:.2f}, {bounds[1]:.2f}] %" if bounds else ""
    return f"`{row['experiment']}`, {error_text(row)} % over {len(row['errors'])} seeds{within}\n"


def rule_text(rule_dir: Path) -> str:
    """What a committed selection rule read and chose, and the fresh seeds it promised; an error where its
    measurements (validation.json) miss a candidate's seed, since the choice did not then read what it says."""
    rule = yaml.safe_load((rule_dir / "rule.yaml").read_text())
    measured = {c["name"]: c for c in json.loads((rule_dir / "validation.json").read_text())["candidates"]}
    seeds = list(rule["seeds"])
    short = [c for c in rule["candidates"] if len(measured.get(c, {}).get("errors", [])) != len(seeds)]
    if short:
        raise ValueError(f"{rule_dir / 'validation.json'} lacks validation errors of {', '.join(short)}")
    chosen = [name for name, c in measured.items() if c.get("chosen")]
    return (
        f"{len(rule['candidates'])} candidate configurations, seeds {', '.join(map(str, seeds))} of each, read "
        f"on validation only; chosen: `{', '.join(chosen)}`, which trains with its baseline and `--test` on "
        f"the fresh seeds {', '.join(map(str, rule['fresh_seeds']))}.\n"
    )


def labels_in_all(rows: list[dict]) -> str:
    """The labels a row's run used, those that chose its checkpoints and configurations included."""
    used = sorted({(row["labels"], row["val_size"]) for row in rows if isinstance(row["labels"], int)})
    said = "; ".join(
        f"{n + v:,} a run ({n:,} to train, {v:,} to choose checkpoints and configurations)" for n, v in used
    )
    return f"Labels in all: {said}." if said else "Labels in all: every training label."


def study_budget(report_dir: Path) -> float | None:
    """The minutes a run of the study may take (``study.yaml``'s ``minutes_budget``), if it states one."""
    study = report_dir / "study.yaml"
    return yaml.safe_load(study.read_text()).get("minutes_budget") if study.is_file() else None


def minutes_text(minutes: float, budget: float | None) -> str:
    return f"{minutes:.1f}" + (f" (over {budget:g})" if budget is not None and minutes > budget else "")


def results_table(report_dir: Path, experiments: list[str] | None = None) -> str:
    """The short form of a results report: per seed, mean ± std, the paired differences, minutes."""
    rows = table_rows(report_dir, experiments)
    budget = study_budget(report_dir)
    lines = [
        "| experiment | objective | test error %, per seed | mean ± std | vs baseline, same seeds [95 % interval] "
        "| what-where terms' effect, same seeds [95 % interval] | minutes per run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['experiment']} | {model_text(row)} "
            f"| {' / '.join(f'{e:.2f}' for e in row['errors'])} | {error_text(row)} "
            f"| {difference_text(row['vs_baseline'])} "
            f"| {difference_text(row['vs_without_what_where'])} | {minutes_text(row['minutes_mean'], budget)} |"
        )
    runs, experiments = ledger.reads(report_dir / "runs")
    lines += [
        "",
        labels_in_all(rows),
        f"Test reads on record in this study (`{report_dir.name}/runs/{ledger.LEDGER}`): {runs} run(s) "
        f"of {experiments} experiment(s).",
    ]
    return "\n".join(lines) + "\n"


def _count(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _row_note(row: dict) -> str:
    if row["callback_seconds"]:
        return f"pictures: {1000 * statistics.median(row['callback_seconds']):.0f} ms per validation"
    return ""


def _ratio_target(ratio: dict) -> str:
    target = ratio["target"]
    return "(info)" if not target else f"{'≥' if target['at_least'] else '≤'} {target['bound']:g}"


def _verdict(ratio: dict) -> str:
    return {"PASS": "met", "MISS": "**missed**"}.get(ratio["verdict"], "")


def benchmark_table(result: dict) -> str:
    """One throughput JSON: its setting, rows, ratios and the step's share of the matmul rate."""
    s, flops = result["settings"], result["flops"]
    lines = [
        f"{result['device']}, {s['dataset']} preset (`{s['arch']}`), batch {s['batch_size']} + "
        f"{s['unlabeled_batch_size']}, {s['precision']}{', compile' if s['compile'] else ''}"
        f"{', channels-last' if s['channels_last'] else ''}; data: {result['data']}; "
        f"best of {s['rounds']} rounds of {s['steps']} steps",
        "",
        "| row | pooling | images/s | ms/step | peak MiB | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['name']} | {row['pooling']} | {_count(row['images_per_second'])} "
            f"| {row['ms_per_step']:.1f} | {row['peak_mib']:.0f} | {_row_note(row)} |"
        )
    compiled = [f"{r['name']} {r['warmup_seconds'][0]:.1f} s" for r in result["rows"] if r.get("warmup_seconds")]
    if s["compile"] and compiled:
        lines += ["", f"Compile time, the first round's setup and untimed steps: {', '.join(compiled)}."]
    lines += ["", "| ratio | measured | target | |", "| --- | --- | --- | --- |"]
    for ratio in result["ratios"]:
        if ratio["value"] is not None:
            lines.append(f"| {ratio['name']} | {ratio['value']:.3f} | {_ratio_target(ratio)} | {_verdict(ratio)} |")
    shares = ", ".join(
        f"{name} {flops[f'{name}_gflops']:.1f} GFLOP/s ({100 * flops[f'{name}_gflops'] / flops['matmul_gflops']:.0f} %)"
        for name in ("plain", "lightning")
    )
    lines += [
        "",
        f"A training step is {flops['gflop_per_step']:.2f} GFLOP (convolutions and matmuls, forward and "
        f"backward); {shares} of the {flops['matmul_gflops']:.1f} GFLOP/s a {flops['matmul_size']}² "
        f"{flops['matmul_dtype']} matmul reaches here.",
    ]
    return "\n".join(lines) + "\n"


def _setting_label(result: dict) -> str:
    s = result["settings"]
    return " + ".join(
        [s["precision"]] + ["compile"] * bool(s["compile"]) + ["channels-last"] * bool(s["channels_last"])
    )


def benchmarks_side_by_side(results: list[dict]) -> str:
    """Several throughput JSONs of one preset: ms per step of each row, a column per setting."""
    names = list(dict.fromkeys(row["name"] for result in results for row in result["rows"]))
    steps = [{row["name"]: row["ms_per_step"] for row in result["rows"]} for result in results]
    lines = [
        "| row, ms/step | " + " | ".join(_setting_label(r) for r in results) + " |",
        "| --- |" + " --- |" * len(results),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{ms[name]:.2f}" if name in ms else "—" for ms in steps) + " |")
    return "\n".join(lines) + "\n"


def first_table(report_file: Path) -> str:
    """The first markdown table of a study's report, as it stands there."""
    lines = report_file.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end]) + "\n"


def versions_table(result: dict) -> str:
    """benchmarks/versions.py's JSON: best ms per step of each row, the earlier version and this one."""
    old, new = result["best_ms_per_step"]["old"], result["best_ms_per_step"]["new"]
    lines = [
        f"| row, ms/step (best of {result['rounds']} rounds) | {result['old']} | this version | old / new |",
        "| --- | --- | --- | --- |",
    ]
    for row, ratio in result["old_over_new"].items():
        lines.append(f"| {row} | {old[row]:.1f} | {new[row]:.1f} | {ratio:.3f} |")
    return "\n".join(lines) + "\n"


def round_scatter(results: list[dict]) -> str:
    """How far the rounds of each row of these benchmark JSONs are apart: slowest over fastest, in %."""
    spreads = sorted(
        100 * (max(row["round_ms"]) / min(row["round_ms"]) - 1)
        for result in results
        for row in result["rows"]
        if len(row.get("round_ms", ())) > 1
    )
    return (
        f"From round to round a row's ms per step varied by {spreads[0]:.0f} to {spreads[-1]:.0f} % "
        f"(slowest round over fastest, {len(spreads)} rows).\n"
    )


def _flat(result: dict, prefix: str = "") -> list[tuple[str, object]]:
    items = []
    for key, value in result.items():
        if isinstance(value, dict):
            items += _flat(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def figures_table(result: dict) -> str:
    """A flat JSON (nested mappings joined with dots) as a table of its figures, as written."""
    lines = ["| figure | value |", "| --- | --- |"]
    lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in _flat(result)]
    return "\n".join(lines) + "\n"


def computed_table(kind: str, sources: list[str], root: Path) -> str:
    """What the block of ``kind`` over ``sources`` (paths relative to ``root``) must hold."""
    if kind == "table":
        return results_table(root / sources[0], sources[1:])
    if kind == "lowest":
        return lowest_row(root / sources[0], sources[1:])
    if kind == "rule":
        return rule_text(root / sources[0])
    if kind == "excerpt":
        return first_table(root / sources[0])
    if kind == "mismatch":
        return mismatch.error_table(root / sources[0])
    if kind == "detection":
        return mismatch.detection_table(root / sources[0])
    results = [json.loads((root / source).read_text()) for source in sources]
    if kind == "versions":
        return versions_table(results[0])
    if kind == "scatter":
        return round_scatter(results)
    if kind == "figures":
        return figures_table(results[0])
    return benchmark_table(results[0]) if len(results) == 1 else benchmarks_side_by_side(results)
