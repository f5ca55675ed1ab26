"""Build the data and the model from one resolved config, and run fit / test / evaluate (the Trainer: ``trainer``).

``train.py`` turns the command line into that config; everything Lightning-shaped
happens here, so tests and notebooks can run an experiment without the CLI.
"""

from __future__ import annotations

import inspect
import os
import platform
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from datamodules.datasets import dataset_info
from datamodules.semi_supervised import SemiSupervisedDataModule
from swwae_lightning import settings as S
from swwae_lightning.module import SWWAEModule, module_settings
from swwae_lightning.objectives import views_needed

from . import ledger
from .checkpoints import check_compatible, has_teacher, load_checkpoint, load_measured_weights, without_teacher
from .run_files import RunRecord, write_json
from .tracking import finish_wandb, write_summary
from .trainer import build_trainer, devices, evaluation_trainer

S.declare(
    S.Setting(
        "arch",
        None,
        "architecture string, e.g. 16C5-BN-MP2-32C3-MP2-FC128-D0.3; default: the dataset's preset",
        "model",
        type=str,
    )
)


def data_settings(cfg: dict) -> dict:
    """The DataModule's keywords from a run's settings."""
    keywords = inspect.signature(SemiSupervisedDataModule).parameters
    return {k: cfg[k] for k in [*S.names_in(["data"]), "seed"] if k in keywords}


def build_datamodule(cfg: dict) -> SemiSupervisedDataModule:
    return SemiSupervisedDataModule(views=views_needed(cfg), **data_settings(cfg))


def architecture(cfg: dict) -> str:
    """The architecture a config builds: its own, or its dataset's preset."""
    if cfg["arch"]:
        return cfg["arch"]
    info = dataset_info(cfg)
    if not info.preset:
        raise ValueError(
            f"--image-size {info.image_shape[1]} has no preset network (the presets take 28, 32 or "
            f"96 px): give --arch, e.g. --arch 32C3-BN-MP2-64C3-MP2-FC128"
        )
    return info.preset


def build_module(cfg: dict) -> SWWAEModule:
    info = dataset_info(cfg)
    channels, height, _ = info.image_shape
    module = SWWAEModule.from_settings(
        architecture(cfg), channels, height, info.num_classes, **{k: cfg[k] for k in module_settings()}
    )
    prepare_network(module.net, cfg)
    return module


def prepare_network(net: torch.nn.Module, cfg: dict) -> torch.nn.Module:
    """The hardware settings that change how the network runs, never what it computes: channels-last
    weights make every convolution run channels-last (oneDNN on CPU, cuDNN on GPU); ``compile``
    compiles, in place, the two entries a training step calls: the whole pass (terms that need the
    decoder) and the encoder alone (the other terms). Both keep the parameters' names and values, so
    checkpoints load either way (loading copies into this network's strides)."""
    if cfg.get("channels_last"):
        net.to(memory_format=torch.channels_last)
    if cfg.get("compile"):
        net.compile(mode="reduce-overhead", dynamic=False)
        net.encode = torch.compile(net.encode, mode="reduce-overhead", dynamic=False)
    return net


def _hardware(trainer: pl.Trainer) -> str:
    if trainer.strategy.root_device.type == "cuda":
        return f"{trainer.world_size} x {torch.cuda.get_device_name(trainer.strategy.root_device)}"
    return (
        f"{trainer.world_size} process(es) on {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})"
    )


def _split_results(split: str, metrics: dict) -> dict:
    """``{split}_error`` and ``{split}_accuracy`` from a ``trainer.test`` / ``validate`` result (NaN if absent)."""
    return {
        f"{split}_{key}": float(metrics.get(f"{split}/{name}", float("nan")))
        for key, name in (("error", "error"), ("accuracy", "acc"))
    }


def cpu_model() -> str:
    """The CPU's vendor and model: the math libraries (MKL above all) pick their code paths by them, so two
    machines that agree on threads, vector instructions and torch can still round differently."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux
        pass
    model, vendor = fields.get("model name") or platform.processor() or platform.machine(), fields.get("vendor_id")
    return f"{model} ({vendor})" if vendor else model


def _machine(trainer: pl.Trainer) -> dict:
    return {
        "hardware": _hardware(trainer),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
        "torch_version": torch.__version__,
    }  # the thread count, the CPU's vector instructions and model (which kernels run) and torch change float results


def load_finetune_weights(module: SWWAEModule, checkpoint: dict, path: str) -> None:
    """Weights only (a fresh optimizer and schedule follow), refused if the layers differ (``path`` names the file).

    The EMA teacher is optional on either side, so SWWAE pretraining can feed a mean-teacher run: a
    teacher the file lacks starts from the loaded student at the first step, and a run without
    a teacher leaves the file's aside.
    """
    theirs, own = checkpoint["state_dict"], module.state_dict()
    if module.teacher is None or not has_teacher(theirs):
        theirs, own = without_teacher(theirs), without_teacher(own)
    check_compatible(own, theirs, path)
    module.load_state_dict(theirs, strict=False)  # check_compatible left only the teacher's entries unmatched


def prepare(cfg: dict, finetune_source: dict | None = None) -> tuple[SWWAEModule, SemiSupervisedDataModule]:
    """Build and check everything that can be wrong in the input before a file is written.

    The data is loaded and split here (Lightning's own ``setup`` call then finds it ready),
    so missing data or an impossible label count fail before the run directory exists.
    ``finetune_source`` is the loaded ``--finetune-from`` checkpoint of a run that starts from it
    (the caller has read it already, for its checks and record).
    """
    devices(cfg)
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)  # before the weights are drawn
    module = build_module(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    if finetune_source is not None:
        load_finetune_weights(module, finetune_source, cfg["finetune_from"])
        saved = finetune_source.get("SemiSupervisedDataModule", {}).get("preprocessing")
        if saved:
            datamodule.use_preprocessing(saved, class_names=False)
    return module, datamodule


def resolved_data_settings(datamodule: SemiSupervisedDataModule) -> dict:
    """The data settings a folder dataset resolved from its files (image size, channels), for config.yaml."""
    if not datamodule.info.from_files:
        return {}
    channels, size, _ = datamodule.info.image_shape
    return {"image_size": size, "channels": channels}


def wandb_resume_id(resume_from: str | None) -> str | None:
    """The W&B run a resumed run continues (its id is kept in the checkpoint)."""
    return load_checkpoint(resume_from).get("wandb_run_id") if resume_from else None


def fit(
    cfg: dict,
    run_dir: Path,
    module: SWWAEModule,
    datamodule: SemiSupervisedDataModule,
    resume_from: str | None = None,
    trainer: pl.Trainer | None = None,
) -> dict:
    """Train, then (with ``test``) test the kept checkpoint on the official test split; returns results.json's content.

    ``trainer`` is ``build_trainer``'s for this run, when the caller built it already.
    """
    trainer = trainer or build_trainer(cfg, run_dir, wandb_resume_id(resume_from))
    # Resuming loads the full training state (optimizer, loops, RNG-free samplers): that
    # file must be trusted, like any pickle; only --evaluate/--finetune-from read untrusted files.
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=False)
    record = next(c for c in trainer.callbacks if isinstance(c, RunRecord))
    train_seconds, resumed_at = record.train_seconds(), list(record.resumed_at)  # before test() restores best.ckpt's
    if trainer.world_size > 1:  # every rank says where it stopped: DDP needs them in step
        print(f"[rank {trainer.global_rank}] finished training at global step {trainer.global_step}", flush=True)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best_score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    if best_score is not None:  # the metric the checkpoint was chosen by, at its best: what a sweep optimizes
        write_summary(trainer, trainer.checkpoint_callback.monitor, float(best_score))
    has_test = len(datamodule.splits.test_images) > 0  # a folder without test/ has none (said when it was read)
    if cfg["test"] and has_test:
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
    else:  # sealed: the kept checkpoint's validation error is the result
        tested = []
    results = {
        **result_settings(cfg),
        "arch": module.hparams.arch,
        **(_split_results("test", tested[0]) if tested else {}),
        **_machine(trainer),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train_seconds": round(train_seconds, 1),
        "best_checkpoint": best,
        "run_dir": str(run_dir),
    }
    if resumed_at:  # the steps its resumed segments started from: how it was stopped and continued
        results["resumed_at_steps"] = resumed_at
    if record.finetuned_from:  # what its starting weights cost: a pretrained row counts the pretraining's time
        results["finetuned_from"] = record.finetuned_from
    if best_score is not None and trainer.checkpoint_callback.monitor == "val/error":
        results["val_error"] = float(best_score)  # the kept checkpoint's: what runs are chosen by
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
        if tested:
            ledger.record(run_dir / "results.json", results, best, "train --test")
            said = f"test error {100 * results['test_error']:.2f}%"
        else:
            why = "the test split stays sealed; --test reads it" if has_test else "no test set"
            said = f"validation error {100 * results.get('val_error', float('nan')):.2f}% ({why})"
        rank_zero_info(f"{said} ; run directory: {run_dir}")
    finish_wandb(trainer)
    return results


def result_settings(cfg: dict) -> dict:
    """Every setting that can change the result, and the seed: what results.json records of the config."""
    keep = [s.name for s in S.SETTINGS.values() if s.affects_result or s.name == "seed"]
    return {k: cfg[k] for k in keep if k in cfg}


def evaluate(cfg: dict, checkpoint_path: str, checkpoint: dict | None = None) -> dict:
    """One split (``evaluate_split``), from weights read safely (``checkpoint``: that file, already read);
    its results file is written beside the checkpoint."""
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(checkpoint_path)
    hparams = checkpoint["hyper_parameters"]
    module = SWWAEModule.from_settings(**hparams)
    load_measured_weights(module, checkpoint, checkpoint_path)
    datamodule = build_datamodule(cfg)
    if "SemiSupervisedDataModule" in checkpoint:  # the run's own validation/labeled split
        datamodule.load_state_dict(checkpoint["SemiSupervisedDataModule"])
    out_dir = Path(checkpoint_path).resolve().parent
    trainer = evaluation_trainer(cfg, out_dir)
    split = cfg["evaluate_split"]
    measure = trainer.validate if split == "val" else trainer.test
    metrics = (measure(module, datamodule=datamodule, verbose=False) or [{}])[0]
    results = {
        "dataset": cfg["dataset"],
        "checkpoint": str(checkpoint_path),
        "arch": hparams["arch"],
        **_split_results(split, metrics),
        **({"val_size": len(datamodule.val_indices)} if split == "val" else {}),
        **_machine(trainer),
    }
    name = "results.json" if split == "test" else f"results-{split}.json"
    if trainer.is_global_zero:
        write_json(out_dir / name, results)
        if split == "test":
            ledger.record(
                checkpoint_path, {**checkpoint.get("swwae_config", {}), **results}, checkpoint_path, "evaluate"
            )
        rank_zero_info(f"{split} error {100 * results[f'{split}_error']:.2f}% ; wrote {out_dir / name}")
    return results
