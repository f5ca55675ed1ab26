"""The README and the pages under docs/ keep their promises: the tests they name exist, their counts
are the suite's, and the front page stays short with its two quick-start commands."""

import re
from pathlib import Path

import test_bad_input

from orchestration import doc_checker

REPO = Path(__file__).resolve().parents[1]
PAGES = "\n".join(page.read_text() for page in doc_checker.pages())


def test_every_test_the_documentation_names_exists():
    named = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?`", PAGES)
    assert len(named) >= 15
    for file, test in named:
        source = (REPO / "tests" / file).read_text()
        assert not test or re.search(rf"^def {test}\(", source, re.M), f"{file}::{test} is not a test"


def test_the_documentation_counts_the_bad_input_cases_there_are():
    count = int(re.search(r"\*\*Bad input\.\*\* (\d+) cases", PAGES)[1])
    assert count == len(test_bad_input.CASES)


def test_the_readme_is_short_and_starts_with_the_two_quick_start_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    quick_start = re.search(r"## Quick start\n\n```bash\n(.*?)```", readme, re.S)[1]
    assert [line.split()[:2] for line in quick_start.splitlines()] == [["make", "train"], ["make", "test"]]
