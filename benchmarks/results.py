"""What every benchmark does with its result: write it as the JSON the README's checked blocks read."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(path: Path | None, result: dict) -> dict:
    """``result`` as indented JSON at ``path`` (its folder made first); nothing without a path. Returns ``result``."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result
