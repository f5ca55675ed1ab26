"""The sealed test split: a run reads it only with --test, --evaluate on request, and every read is on record."""

import json
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from test_cli import TINY

import train
from orchestration import ledger

REPO = Path(__file__).resolve().parents[1]
SEALED = [arg for arg in TINY if arg != "--test"]


def test_a_run_reads_the_test_split_only_with_test_and_every_read_is_appended_to_the_ledger(
    tmp_path, tiny_dataset, caplog
):
    argv = ["--dataset", tiny_dataset, "--data-dir", str(tmp_path / "data"), *SEALED, "--max-epochs", "2"]
    studies = tmp_path / "runs"
    assert train.main([*argv, "--run-dir", str(studies / "sealed-seed0")]) == 0
    sealed = json.loads((studies / "sealed-seed0" / "results.json").read_text())
    assert "test_error" not in sealed and 0 <= sealed["val_error"] <= 1
    assert "the test split stays sealed; --test reads it" in caplog.text and "test error" not in caplog.text
    assert not (studies / ledger.LEDGER).exists()

    assert train.main([*argv, "--test", "--seed", "3", "--run-dir", str(studies / "final-seed3")]) == 0
    final = json.loads((studies / "final-seed3" / "results.json").read_text())
    (entry,) = ledger.entries(studies / ledger.LEDGER)
    assert entry["how"] == "train --test" and entry["run"] == "final-seed3" and entry["experiment"] == "final"
    assert entry["seed"] == 3 and entry["test_error"] == final["test_error"]
    assert entry["checkpoint"] == final["best_checkpoint"] and len(entry["config_hash"]) == 12
    assert entry["commit"] and entry["time"]

    best = studies / "final-seed3" / "checkpoints" / "best.ckpt"
    assert train.main(["--evaluate", str(best), "--evaluate-split", "val"]) == 0  # validation: not a test read
    assert len(ledger.entries(studies / ledger.LEDGER)) == 1
    assert train.main(["--evaluate", str(best)]) == 0
    evaluated = ledger.entries(studies / ledger.LEDGER)[-1]
    assert evaluated["how"] == "evaluate" and evaluated["run"] == "final-seed3"
    assert evaluated["test_error"] == final["test_error"] and evaluated["config_hash"] == entry["config_hash"]


def test_a_committed_test_error_that_no_ledger_records_fails_the_check(tmp_path):
    run_dir = tmp_path / "reports" / "study" / "runs" / "x-seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    results = {"seed": 0, "labels": 100, "test_error": 0.0123}
    (run_dir / "results.json").write_text(json.dumps(results))
    (problem,) = ledger.check(tmp_path)
    assert problem.startswith("reports/study/runs/x-seed0/results.json: its test error 0.0123 is in no ledger entry")
    ledger.record(run_dir / "results.json", results, "best.ckpt", "train --test")
    assert ledger.check(tmp_path) == []
    (run_dir / "results.json").write_text(json.dumps({**results, "test_error": 0.0124}))  # edited after the read
    assert len(ledger.check(tmp_path)) == 1


def test_every_test_error_committed_under_reports_is_on_record():
    assert ledger.check(REPO) == []
    reconstructed = [e for p in (REPO / "reports").rglob(ledger.LEDGER) for e in ledger.entries(p)]
    assert len(reconstructed) >= 135 and all(e["commit"] for e in reconstructed)


@pytest.mark.parametrize("rechoice", ["mnist-100-rechoice", "fashion-mnist-1000-rechoice"])
def test_the_fresh_seed_rows_were_read_on_test_only_after_the_rule_that_chose_them_was_committed(rechoice):
    rule_file = REPO / "reports" / rechoice / "rule.yaml"
    rule = yaml.safe_load(rule_file.read_text())
    added = subprocess.run(
        ["git", "-C", str(REPO), "log", "--diff-filter=A", "--format=%cI", "--", str(rule_file.relative_to(REPO))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    chosen = re.search(r"Chosen: `([^`]+)`", (rule_file.parent / "choice.md").read_text())[1]
    runs = {f"{name}-seed{seed}" for name in (chosen, rule["candidates"][chosen]) for seed in rule["fresh_seeds"]}
    reads = [e for path in (REPO / "reports").rglob(ledger.LEDGER) for e in ledger.entries(path) if e["run"] in runs]
    assert {e["run"] for e in reads} == runs  # every fresh seed of the chosen row and its baseline was read ...
    first = min(datetime.fromisoformat(e["time"]) for e in reads)
    assert first > datetime.fromisoformat(added)  # ... and none before the rule was committed
    assert not any(e.get("reconstructed") for e in reads) and all(e["how"] == "train --test" for e in reads)
