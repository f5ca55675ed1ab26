"""The README's promises point at tests that exist, and its counts are the suite's."""

import re
from pathlib import Path

import test_bad_input

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_every_test_the_readme_names_exists():
    named = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?`", README)
    assert len(named) >= 15
    for file, test in named:
        source = (REPO / "tests" / file).read_text()
        assert not test or re.search(rf"^def {test}\(", source, re.M), f"{file}::{test} is not a test"


def test_the_readme_counts_the_bad_input_cases_there_are():
    count = int(re.search(r"\*\*Bad input\.\*\* (\d+) cases", README)[1])
    assert count == len(test_bad_input.CASES)
