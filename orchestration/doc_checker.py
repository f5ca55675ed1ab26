"""Documentation that cannot drift: the README and every page under ``docs/`` are checked here.

    python -m orchestration.doc_checker --check     # exit 1 naming each stale block or page
    python -m orchestration.doc_checker --update    # rewrite them from their sources

Two things are generated rather than written: each marked block (``doc_tables`` says what a
block of each kind holds, computed from files committed under ``reports/``), and
``docs/cli.md``, the command-line reference, from the declared settings.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .doc_tables import KINDS, computed_table

REPO = Path(__file__).resolve().parents[1]
CLI_REFERENCE = "docs/cli.md"
BLOCK = re.compile(
    r"(<!-- (?P<kind>" + "|".join(KINDS) + r"): (?P<sources>[^>]+?) -->\n)(?P<table>.*?)"
    r"(<!-- /(?P=kind) -->)",
    re.S,
)


def pages(root: Path = REPO) -> list[Path]:
    """The README and every markdown page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]


def page_blocks(page: Path, root: Path) -> list[tuple[re.Match, str]]:
    """Each marked block of ``page`` and what it must hold (its sources are relative to ``root``)."""
    return [
        (match, computed_table(match["kind"], match["sources"].split(), root))
        for match in BLOCK.finditer(page.read_text())
    ]


def _default_text(setting) -> str:
    if setting.default is None or setting.default == []:
        return "—"
    return f"`{str(setting.default).lower() if isinstance(setting.default, bool) else setting.default}`"


def cli_reference() -> str:
    """docs/cli.md: every flag of train.py, by group, with its default, allowed values and help."""
    from swwae_lightning import settings as S

    from .plugins import declare_all_settings

    declare_all_settings()
    lines = [
        "# Command-line reference",
        "",
        "Every flag of `python train.py`, generated from the declared settings by "
        "`python -m orchestration.doc_checker --update`; a test fails when this page is stale.",
        "",
        "`--config FILE` reads flag values from a YAML file (snake_case or kebab-case keys); flags given "
        "on the command line override it. Every flag is also accepted in snake_case (`--batch_size`), "
        "as a W&B sweep agent passes them.",
        "",
    ]
    for group in S.GROUPS:
        members = [s for s in S.SETTINGS.values() if s.group == group]
        if not members:
            continue
        lines += [f"## {group}", "", "| flag | default | what it sets |", "| --- | --- | --- |"]
        for s in members:
            flag = f"`{s.option}` / `--no-{s.option[2:]}`" if s.flag == "switch" else f"`{s.option}`"
            allowed = f" One of: {', '.join(f'`{c}`' for c in s.allowed())}." if s.choices else ""
            lines.append(f"| {flag} | {_default_text(s)} | {s.help}.{allowed} |")
        lines.append("")
    return "\n".join(lines)


def check_page(page: Path, root: Path = REPO) -> list[str]:
    """One line per marked block of ``page`` that differs from what its sources give."""
    return [
        f"{page}: the {m['kind']} of {m['sources']} differs from what its committed files give; "
        f"regenerate it with --update"
        for m, computed in page_blocks(page, root)
        if m["table"] != computed
    ]


def update_page(page: Path, root: Path = REPO) -> int:
    """Rewrite every marked block of ``page`` from its sources; returns how many there are."""
    blocks = page_blocks(page, root)
    text = page.read_text()
    for match, computed in reversed(blocks):
        text = text[: match.start("table")] + computed + text[match.end("table") :]
    page.write_text(text)
    return len(blocks)


def check(root: Path = REPO) -> list[str]:
    """Every page's stale blocks, the CLI reference when it is not what the settings give, and every committed
    test error that the ledger does not record."""
    from . import ledger

    problems = [line for page in pages(root) for line in check_page(page, root)] + ledger.check(root)
    reference = root / CLI_REFERENCE
    if not reference.is_file() or reference.read_text() != cli_reference():
        problems.append(f"{reference}: not what the declared settings give; regenerate it with --update")
    return problems


def update(root: Path = REPO) -> int:
    """Rewrite every page's blocks and the CLI reference; returns how many blocks there are."""
    (root / CLI_REFERENCE).parent.mkdir(parents=True, exist_ok=True)
    (root / CLI_REFERENCE).write_text(cli_reference())
    return sum(update_page(page, root) for page in pages(root))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="exit 1 naming each block or page that differs")
    action.add_argument("--update", action="store_true", help="rewrite them from their sources, then check")
    action.add_argument(
        "--backfill-ledger",
        action="store_true",
        help="record in the ledgers, marked reconstructed, the committed test errors that predate them; then check",
    )
    parser.add_argument("--root", type=Path, default=REPO, help="the repository whose pages these are")
    parser.add_argument(
        "--plugins", nargs="+", default=[], help="plugins that committed runs name (their code runs: trust them)"
    )
    args = parser.parse_args(argv)
    try:
        from .plugins import load

        load(args.plugins)
        if args.update:
            print(f"rewrote {update(args.root)} marked block(s) and {CLI_REFERENCE}")
        if args.backfill_ledger:
            from . import ledger
            from .plugins import declare_all_settings

            declare_all_settings()
            print(f"recorded {ledger.backfill(args.root)} test read(s) as reconstructed")
        problems = check(args.root)
    except (ValueError, OSError, ImportError) as error:  # a missing file or experiment; a plugin not chosen
        print(f"error: {error}", file=sys.stderr)
        return 1
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
