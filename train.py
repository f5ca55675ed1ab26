"""Train, resume, fine-tune or evaluate an SWWAE experiment: `python train.py --help` lists every flag."""

import sys

from orchestration.cli import main, resolve_config  # noqa: F401  (tests and scripts use both)

if __name__ == "__main__":
    sys.exit(main())
