"""The test split is sealed, and every read of it is on record.

A semi-supervised table can be audited only if a reader can tell which configurations were chosen
before their test error was seen. So a training run reads the test split only when asked (``--test``,
or ``test: true`` in a config written for a final row), ``--evaluate`` reads it on request, and each
read appends one line to ``test-reads.jsonl`` in the folder that holds the run directory (the
study's runs; a loose checkpoint's own folder): the time, the run and its experiment, a hash of the
settings that change the result, the seed, the checkpoint, the error and the commit the code ran
from. The ledger travels with the run files: commit it beside them. The documentation checker
(``python -m orchestration.doc_checker --check``) fails on a committed test error that no entry records, and
``--backfill-ledger`` records those that predate the ledger.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

from swwae_lightning import settings as S

from .run_files import experiment_name

LEDGER = "test-reads.jsonl"
REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_FOLDERS = ("checkpoints", "weights")  # RUN/checkpoints/best.ckpt, RUN/weights/best.ckpt


def run_of(path: str | Path) -> Path | None:
    """The run directory a checkpoint or results file belongs to; None for a loose checkpoint."""
    path = Path(path).resolve()
    folder = path.parent
    if folder.name in CHECKPOINT_FOLDERS:
        return folder.parent
    return folder if path.name.startswith("results") and (folder / "config.yaml").is_file() else None


def ledger_and_run(path: str | Path) -> tuple[Path, str]:
    """(the ledger, the run's name) a test read of ``path`` (a run's checkpoint or results file) goes to."""
    run = run_of(path)
    if run is None:  # a copied or downloaded checkpoint: the ledger sits beside it
        return Path(path).resolve().parent / LEDGER, Path(path).name
    return run.parent / LEDGER, run.name


def config_hash(results: dict) -> str:
    """The settings that change the result, but the seed, as a short hash: one per configuration."""
    keep = {s.name for s in S.SETTINGS.values() if s.affects_result} - {"seed"}
    chosen = {k: results[k] for k in sorted(keep) if k in results}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:12]


def code_commit() -> str | None:
    """The commit the code runs from (``-dirty`` with uncommitted changes), or None outside a checkout."""
    try:
        said = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return said.stdout.strip() or None if said.returncode == 0 else None


def record(path: str | Path, results: dict, checkpoint: str, how: str) -> Path:
    """Append one test read (``how``: train --test, or evaluate) of the run ``path`` belongs to; returns the ledger."""
    ledger, run = ledger_and_run(path)
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "how": how,
        "run": run,
        "experiment": experiment_name(run),
        "config_hash": config_hash(results),
        "seed": results.get("seed"),
        "checkpoint": str(checkpoint),
        "test_error": results["test_error"],
        "commit": code_commit(),
    }
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with open(ledger, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return ledger


def entries(ledger: Path) -> list[dict]:
    return [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()] if ledger.is_file() else []


def test_results(root: Path) -> list[tuple[Path, dict]]:
    """Every results file under ``root/reports`` that holds a test error, with its content."""
    found = []
    for path in sorted((root / "reports").rglob("results*.json")):
        results = json.loads(path.read_text())
        if isinstance(results, dict) and "test_error" in results:
            found.append((path, results))
    return found


def _recorded(path: Path, results: dict) -> bool:
    ledger, run = ledger_and_run(path)
    return any(e["run"] == run and e["test_error"] == results["test_error"] for e in entries(ledger))


def check(root: Path = REPO) -> list[str]:
    """One line for each committed test error that no ledger entry records."""
    return [
        f"{path.relative_to(root)}: its test error {results['test_error']} is in no ledger entry "
        f"({ledger_and_run(path)[0].relative_to(root)}); a test read leaves one"
        for path, results in test_results(root)
        if not _recorded(path, results)
    ]


def reads(study: Path) -> tuple[int, int]:
    """(test reads, experiments read) in the ledger of ``study``'s runs folder."""
    read = entries(study / LEDGER)
    return len(read), len({e["experiment"] for e in read})


def _added_in(root: Path, path: Path) -> tuple[str, str]:
    """(commit, its date) that added ``path`` to the repository."""
    said = subprocess.run(
        ["git", "-C", str(root), "log", "--diff-filter=A", "--format=%H %cI", "--", str(path.relative_to(root))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return (said[-2], said[-1]) if said else ("", "")


def backfill(root: Path = REPO) -> int:
    """Record the committed test errors that predate the ledger, marked reconstructed, with the commit that added
    each results file and that commit's date (when the error was first on record); returns how many."""
    added = 0
    for path, results in test_results(root):
        if _recorded(path, results):
            continue
        ledger, run = ledger_and_run(path)
        commit, date = _added_in(root, path)
        entry = {
            "time": date,
            "how": "reconstructed from a committed results.json",
            "run": run,
            "experiment": experiment_name(run),
            "config_hash": config_hash(results),
            "seed": results.get("seed"),
            "checkpoint": results.get("best_checkpoint") or results.get("checkpoint"),
            "test_error": results["test_error"],
            "commit": commit,
            "reconstructed": True,
        }
        with open(ledger, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        added += 1
    return added
