"""Seed sweeps: the training command once per (config, seed), a few at a time, resumable.

A sweep plan (YAML) expands into one config per variant; each run goes to
``runs_root/<config>-seed<S>``, is kept when finished and resumed when interrupted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def plan_configs(plan_file: str | Path, runs_root: str | Path) -> list[Path]:
    """Expand a sweep plan into one config file per variant, under runs_root/configs/.

    A plan is YAML: ``base`` (a config path, relative to the plan's folder or the working directory),
    optional ``common`` settings for every variant, and ``variants``, a mapping of variant name to
    the settings it changes, e.g. ``{baseline: {lambda_rec: 0, lambda_mid: 0}, no-augment: {augment: false}}``.
    Each variant's config is the base with its settings replaced; its runs go to runs_root/<variant>-seed<S>.
    """
    plan_file = Path(plan_file)
    try:
        plan = yaml.safe_load(plan_file.read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"sweep plan {plan_file} does not exist") from None
    variants = plan.get("variants") if isinstance(plan, dict) else None
    if not isinstance(variants, dict) or not variants or "base" not in plan:
        raise ValueError(f"sweep plan {plan_file} needs 'base: CONFIG' and 'variants: {{NAME: {{SETTING: VALUE}}}}'")
    base_path = next((p for p in (plan_file.parent / plan["base"], Path(plan["base"])) if p.is_file()), None)
    if base_path is None:
        raise ValueError(f"sweep plan {plan_file}: base config {plan['base']!r} does not exist")
    base = {**(yaml.safe_load(base_path.read_text()) or {}), **(plan.get("common") or {})}
    out_dir = Path(runs_root) / "configs"
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = []
    for name, changes in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(name)) or not isinstance(changes or {}, dict):
            raise ValueError(
                f"sweep plan {plan_file}: variant {name!r} needs a plain name (letters, digits, . _ -) "
                f"and a mapping of settings"
            )
        config = out_dir / f"{name}.yaml"
        config.write_text(
            f"# {name}: {base_path.name} with {changes or 'nothing'} changed (from {plan_file})\n"
            + yaml.safe_dump({**base, **(changes or {})}, sort_keys=False)
        )
        configs.append(config)
    return configs


def sweep(
    configs: list[str | Path],
    seeds: list[int],
    runs_root: str | Path = "runs",
    train_args: list[str] | None = None,
    jobs: int = 1,
    plugin_specs: list[str] | None = None,
) -> tuple[list[Path], list[str]]:
    """The training command line once per (config, seed) into runs_root/<config>-seed<S>, ``jobs`` at a time,
    each given ``plugin_specs`` (a config's own ``plugins:`` key reaches its run by itself). A sweep makes a
    results table's rows, so each run reads the test split (``--test``), and its ledger records the read.

    A finished run (results.json) is kept; an interrupted one (last.ckpt, no results.json) is resumed.
    With jobs > 1 each run's output goes to its run directory's train.log instead of the terminal.
    Returns the run directories and a line for each run that failed.
    """
    run_dirs, commands = [], []
    for config in configs:
        for seed in seeds:
            run_dir = Path(runs_root) / f"{Path(config).stem}-seed{seed}"
            run_dirs.append(run_dir)
            if (run_dir / "results.json").is_file():
                print(f"[sweep] {run_dir} is finished; kept", flush=True)
                continue
            command = [
                sys.executable,
                "-m",
                "orchestration.cli",
                "--config",
                str(config),
                "--seed",
                str(seed),
                "--run-dir",
                str(run_dir),
                "--test",
                *(["--plugins", *plugin_specs] if plugin_specs else []),
                *(train_args or []),
            ]
            if (run_dir / "checkpoints" / "last.ckpt").is_file():
                command += ["--resume", "last"]
            commands.append((run_dir, command))

    def train(run_dir: Path, command: list[str]) -> str | None:
        print(f"[sweep] {' '.join(command)}", flush=True)
        if jobs == 1:
            code = subprocess.run(command).returncode
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "train.log", "ab") as log:
                code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
        return None if code == 0 else f"{run_dir}: train.py exited with status {code}"

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        failures = [line for line in pool.map(lambda job: train(*job), commands) if line]
    return run_dirs, failures
