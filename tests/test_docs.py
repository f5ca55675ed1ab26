"""Documentation that cannot drift: every marked block of the README and docs/ is recomputed from reports/,
and the command-line reference is the declared settings'."""

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_experiments import fake_run

from orchestration import doc_checker, doc_tables, report
from swwae_lightning import settings

REPO = Path(__file__).resolve().parents[1]


def test_results_tables_are_recomputed_from_committed_runs_and_a_hand_edit_in_a_docs_page_fails(tmp_path, capsys):
    for seed, error in enumerate((0.10, 0.12)):
        fake_run(tmp_path / "live" / f"swwae-seed{seed}", seed, error)
        fake_run(tmp_path / "live" / f"baseline-seed{seed}", seed, 0.15, lambda_rec=0.0, mode="semi")
    report.write_report([tmp_path / "live"], tmp_path / "reports" / "table")  # archives the runs' files
    (tmp_path / "README.md").write_text("# A\n")
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text("# A\n\n<!-- table: reports/table -->\nstale\n<!-- /table -->\n\nText.\n")
    assert doc_checker.main(["--update", "--root", str(tmp_path)]) == 0
    text = page.read_text()
    assert (
        "| swwae | semi, hard pool, where unpool, what top, λ: rec 1 + mid 0.1 | 10.00 / 12.00 | 11.00 ± 1.41 "
        "| -4.00 ± 1.41 (2) [-16.71, +8.71] level |"
        in text
        and text.endswith("<!-- /table -->\n\nText.\n")
    )
    assert doc_checker.main(["--check", "--root", str(tmp_path)]) == 0
    page.write_text(text.replace("11.00 ± 1.41", "10.00 ± 1.41"))  # a figure edited by hand
    assert doc_checker.main(["--check", "--root", str(tmp_path)]) == 1
    assert "docs/results.md: the table of reports/table differs" in capsys.readouterr().err


def test_a_headline_table_shows_the_experiments_it_names_with_differences_over_every_run(tmp_path):
    for seed, error in enumerate((0.10, 0.12)):
        fake_run(tmp_path / "live" / f"swwae-seed{seed}", seed, error)
        fake_run(tmp_path / "live" / f"baseline-seed{seed}", seed, 0.15, lambda_rec=0.0, mode="semi")
    report.write_report([tmp_path / "live"], tmp_path / "reports" / "table")
    table = doc_tables.computed_table("table", ["reports/table", "swwae"], tmp_path)
    rows = [line for line in table.splitlines() if line.startswith("| swwae") or line.startswith("| baseline")]
    assert (
        len(rows) == 1 and "| -4.00 ± 1.41 (2) [-16.71, +8.71] level |" in rows[0]
    )  # paired with the baseline it leaves out
    with pytest.raises(ValueError, match="has no experiment swwea"):
        doc_tables.computed_table("table", ["reports/table", "swwae", "swwea"], tmp_path)
    (tmp_path / "README.md").write_text("<!-- table: reports/table swwea -->\n<!-- /table -->\n")
    assert doc_checker.main(["--check", "--root", str(tmp_path)]) == 1  # one line, no traceback


def throughput_json(precision: str = "32-true", plain_ms: float = 200.0) -> dict:
    """What benchmarks/throughput.py --json writes, cut down to what the README shows."""

    def row(name, ms, images=256, callback_seconds=()):
        return {
            "name": name,
            "pooling": "hard",
            "ms_per_step": ms,
            "images_per_second": images / ms * 1000,
            "peak_mib": 210.4,
            "callback_seconds": list(callback_seconds),
        }

    return {
        "settings": {
            "dataset": "cifar10",
            "arch": "8C3-MP2-FC16",
            "batch_size": 16,
            "unlabeled_batch_size": 16,
            "precision": precision,
            "compile": False,
            "channels_last": False,
            "rounds": 2,
            "steps": 5,
        },
        "device": "CPU (2 cores)",
        "data": "random uint8 (not found on disk)",
        "rows": [row("plain", plain_ms), row("lightning", 250.0, callback_seconds=[0.5, 0.7, 0.9])],
        "ratios": [
            {
                "name": "lightning / plain",
                "value": plain_ms / 250.0,
                "verdict": "MISS",
                "target": {"at_least": True, "bound": 0.95},
            },
            {"name": "soft / hard per step", "value": None, "verdict": "", "target": None},
        ],
        "flops": {
            "gflop_per_step": 4.0,
            "matmul_size": 2048,
            "matmul_dtype": "float32",
            "matmul_gflops": 80.0,
            "plain_gflops": 20.0,
            "lightning_gflops": 16.0,
        },
    }


def test_a_benchmark_table_comes_from_its_json_and_a_hand_edit_fails_the_check(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "cpu.json").write_text(json.dumps(throughput_json()))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- benchmark: reports/cpu.json -->\nold\n<!-- /benchmark -->\n")
    assert doc_checker.update_page(readme, tmp_path) == 1
    text = readme.read_text()
    assert "CPU (2 cores), cifar10 preset (`8C3-MP2-FC16`), batch 16 + 16, 32-true; data: random uint8" in text
    assert "| plain | hard | 1,280 | 200.0 | 210 |  |" in text
    assert "| lightning | hard | 1,024 | 250.0 | 210 | pictures: 700 ms per validation |" in text
    assert "| lightning / plain | 0.800 | ≥ 0.95 | **missed** |" in text
    assert "soft / hard" not in text  # a ratio this run could not measure is left out, not shown as n/a
    assert "plain 20.0 GFLOP/s (25 %), lightning 16.0 GFLOP/s (20 %) of the 80.0 GFLOP/s" in text
    readme.write_text(text.replace("| 0.800 |", "| 0.950 |"))  # a ratio edited by hand
    assert doc_checker.check_page(readme, tmp_path) == [
        f"{readme}: the benchmark of reports/cpu.json differs from what its "
        "committed files give; regenerate it with --update"
    ]


def test_a_compiled_benchmarks_table_shows_each_rows_compile_time():
    result = throughput_json()
    result["rows"][0]["warmup_seconds"] = [12.5, 0.5]
    assert "Compile time" not in doc_tables.benchmark_table(result)
    result["settings"]["compile"] = True
    assert "Compile time, the first round's setup and untimed steps: plain 12.5 s." in (
        doc_tables.benchmark_table(result)
    )


def test_several_benchmark_jsons_sit_side_by_side_in_ms_per_step(tmp_path):
    (tmp_path / "fp32.json").write_text(json.dumps(throughput_json()))
    bf16 = throughput_json("bf16-mixed", plain_ms=150.0)
    bf16["rows"].append(copy.deepcopy(bf16["rows"][0]) | {"name": "plain soft", "ms_per_step": 300.0})
    (tmp_path / "bf16.json").write_text(json.dumps(bf16))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- benchmark: fp32.json bf16.json -->\n<!-- /benchmark -->\n")
    doc_checker.update_page(readme, tmp_path)
    assert readme.read_text() == (
        "<!-- benchmark: fp32.json bf16.json -->\n| row, ms/step | 32-true | bf16-mixed |\n"
        "| --- | --- | --- |\n| plain | 200.00 | 150.00 |\n| lightning | 250.00 | 250.00 |\n"
        "| plain soft | — | 300.00 |\n<!-- /benchmark -->\n"
    )


def test_a_study_excerpt_is_the_first_table_of_its_report(tmp_path):
    (tmp_path / "study.md").write_text("# Study\n\nText.\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n| other |\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- excerpt: study.md -->\n| a | b |\n| --- | --- |\n| 1 | 3 |\n<!-- /excerpt -->\n")
    assert doc_checker.check_page(readme, tmp_path) != []  # 3 where the report says 2
    doc_checker.update_page(readme, tmp_path)
    assert readme.read_text() == "<!-- excerpt: study.md -->\n| a | b |\n| --- | --- |\n| 1 | 2 |\n<!-- /excerpt -->\n"
    assert doc_checker.check_page(readme, tmp_path) == []


def test_a_versions_table_shows_each_rows_best_ms_and_the_ratio(tmp_path):
    result = {
        "old": "abc123",
        "rounds": 3,
        "best_ms_per_step": {"old": {"plain": 300.0}, "new": {"plain": 250.0}},
        "old_over_new": {"plain": 1.2},
    }
    (tmp_path / "versions.json").write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- versions: versions.json -->\n<!-- /versions -->\n")
    doc_checker.update_page(readme, tmp_path)
    assert readme.read_text() == (
        "<!-- versions: versions.json -->\n"
        "| row, ms/step (best of 3 rounds) | abc123 | this version | old / new |\n"
        "| --- | --- | --- | --- |\n| plain | 300.0 | 250.0 | 1.200 |\n<!-- /versions -->\n"
    )


def test_a_scatter_sentence_is_computed_from_the_rounds_of_its_jsons(tmp_path):
    result = throughput_json()
    result["rows"][0]["round_ms"], result["rows"][1]["round_ms"] = [200.0, 210.0], [250.0, 350.0, 300.0]
    (tmp_path / "cpu.json").write_text(json.dumps(result))
    page = tmp_path / "page.md"
    page.write_text("<!-- scatter: cpu.json -->\nrounds vary 5 to 25 %\n<!-- /scatter -->\n")
    assert doc_checker.check_page(page, tmp_path) != []  # typed, not computed
    doc_checker.update_page(page, tmp_path)
    assert page.read_text() == (
        "<!-- scatter: cpu.json -->\nFrom round to round a row's ms per step varied by 5 to "
        "40 % (slowest round over fastest, 2 rows).\n<!-- /scatter -->\n"
    )


def test_every_marked_block_of_the_readme_and_docs_matches_its_committed_files_and_the_cli_page_is_current():
    # A fresh process: tests here register plugins' settings, which the CLI page must not list.
    env = {k: v for k, v in os.environ.items() if k != "SWWAE_PLUGINS"}
    checked = subprocess.run(
        [sys.executable, "-m", "orchestration.doc_checker", "--check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stderr
    assert len(doc_checker.pages()) > 3  # the README and the pages under docs/ are all read


def test_a_changed_setting_makes_the_cli_page_stale(tmp_path, monkeypatch):
    (tmp_path / "README.md").write_text("# A\n")
    doc_checker.update(tmp_path)
    assert doc_checker.check(tmp_path) == []
    lr = settings.SETTINGS["lr"]
    monkeypatch.setitem(settings.SETTINGS, "lr", dataclasses.replace(lr, default=0.1))
    assert doc_checker.check(tmp_path) == [
        f"{tmp_path / doc_checker.CLI_REFERENCE}: not what the declared settings give; regenerate it with --update"
    ]


def test_the_cli_page_lists_every_flag_with_its_default():
    text = (REPO / doc_checker.CLI_REFERENCE).read_text()
    for name in ("consistency_warmup", "overview_every", "wandb_group", "wandb_job_type", "plugins"):
        assert f"`{settings.SETTINGS[name].option}`" in text
    assert "| `--lr` | `0.003` |" in text and "| `--augment` / `--no-augment` | `true` |" in text


def test_every_page_under_docs_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    for page in doc_checker.pages()[1:]:
        assert f"]({page.relative_to(REPO)})" in readme, f"{page} is not linked from the README"


def test_every_committed_benchmark_json_is_shown_in_a_page():
    shown = {
        source
        for page in doc_checker.pages()
        for match in doc_checker.BLOCK.finditer(page.read_text())
        if match["kind"] in ("benchmark", "versions")
        for source in match["sources"].split()
    }
    committed = {
        str(path.relative_to(REPO))
        for pattern in ("throughput*.json", "versions*.json")
        for path in (REPO / "reports").rglob(pattern)
    }
    assert committed and committed <= shown


def test_a_figures_block_lists_every_figure_of_its_json_as_written(tmp_path):
    (tmp_path / "cache.json").write_text(json.dumps({"files": 70000, "first_s": 9.86, "targets": {"first_s": 60}}))
    page = tmp_path / "page.md"
    page.write_text("<!-- figures: cache.json -->\n| files | 70,000 |\n<!-- /figures -->\n")
    assert doc_checker.check_page(page, tmp_path) != []
    doc_checker.update_page(page, tmp_path)
    assert page.read_text() == (
        "<!-- figures: cache.json -->\n| figure | value |\n| --- | --- |\n| files | 70000 |\n"
        "| first_s | 9.86 |\n| targets.first_s | 60 |\n<!-- /figures -->\n"
    )


def test_a_rule_block_says_what_the_rule_read_and_chose_and_fails_where_a_measurement_is_missing(tmp_path):
    rule = {"seeds": [0, 1], "candidates": {"a": "base", "b": "base"}, "fresh_seeds": [10, 11]}
    (tmp_path / "rule.yaml").write_text(__import__("yaml").safe_dump(rule))
    measured = [
        {"name": "a", "errors": [1.0, 2.0], "chosen": False},
        {"name": "b", "errors": [1.0, 1.5], "chosen": True},
    ]
    (tmp_path / "validation.json").write_text(json.dumps({"candidates": measured}))
    assert doc_tables.rule_text(tmp_path) == (
        "2 candidate configurations, seeds 0, 1 of each, read on validation only; chosen: `b`, which trains "
        "with its baseline and `--test` on the fresh seeds 10, 11.\n"
    )
    measured[0]["errors"] = [1.0]  # seed 1 of a never measured: the rule did not read what it says
    (tmp_path / "validation.json").write_text(json.dumps({"candidates": measured}))
    with pytest.raises(ValueError, match="lacks validation errors of a"):
        doc_tables.rule_text(tmp_path)
