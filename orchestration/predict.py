"""Labels back for an unlabeled pool: ``python train.py --predict CKPT [--images DIR] [--out FILE.csv]``.

Every image under DIR (by default the run's own unlabeled pool) is decoded with the checkpoint's
own preprocessing (image size, channels, mean and std) and classified in batches; the CSV has a
row per readable image with the predicted class name, its probability, the top classes and every
unknown-class score the model can give (``swwae_lightning.unknown_scores``); the one ``--unknown-score``
names labels a row ``unknown`` above the threshold that ``--unknown-rate`` of the run's own validation
images pass.
Unreadable files go to a list beside it, never into the CSV and never a crash.
"""

from __future__ import annotations

import csv
import math
import sys
from collections import Counter
from pathlib import Path

import torch

from datamodules import augment
from datamodules.datasets import DATASETS
from datamodules.folder import decode, failure_reason, files_under, printable, read_regular
from swwae_lightning import settings as S
from swwae_lightning.module import SWWAEModule
from swwae_lightning.unknown_scores import (
    SCORES,
    energy_score,
    one_vs_all_score,
    probability_score,
    reconstruction_score,
)

from .checkpoints import load_checkpoint, load_measured_weights

TOP_K = 3
UNKNOWN = "unknown"  # the label of a row whose unknown-class score is above the validation threshold
AUTO = "auto"  # --unknown-score: the one-vs-all heads' score where the model has them, else the probability's
# The CSV's column of each unknown-class score (empty where the model cannot give it)
SCORE_COLUMNS = {
    "probability": "minus_log_probability",
    "energy": "energy",
    "reconstruction": "reconstruction_error",
    "one_vs_all": "one_vs_all",
}
CONFIDENT = 0.95  # the summary line's share of images above this probability
BATCH = 256

S.declare(
    S.Setting(
        "predict",
        None,
        "classify every image under --images (default: the run's own unlabeled pool) with "
        "this checkpoint and write a CSV",
        "run",
        type=str,
        affects_result=False,
    ),
    S.Setting(
        "images",
        None,
        "--predict: the folder of images to classify (any depth)",
        "run",
        type=str,
        affects_result=False,
        part_of="predict",
    ),
    S.Setting(
        "unknown_rate",
        0.05,
        "--predict: the share of the run's own validation images (all of known classes) that the unknown-class "
        "threshold would call unknown; rows whose score is above it are labelled unknown (0: never)",
        "run",
        type=float,
        check=S.within(0.0, 1.0, closed_low=True),
        affects_result=False,
        part_of="predict",
    ),
    S.Setting(
        "unknown_score",
        AUTO,
        "--predict: the score that labels a row unknown: minus the log of the top probability, the energy of "
        "the logits (minus their log-sum-exp), the what-where decoder's reconstruction error, or the "
        "one-vs-all heads' (a model trained with --lambda-ova); auto: the heads' where the model has them, "
        "else the probability's. The CSV has every score the model can give",
        "run",
        type=str,
        choices=lambda: (AUTO, *SCORES),
        affects_result=False,
        part_of="predict",
    ),
    S.Setting(
        "out",
        None,
        "--predict: the CSV to write; default: predictions.csv in the checkpoint's run directory",
        "run",
        type=str,
        affects_result=False,
        part_of="predict",
    ),
)


def preprocessing_of(checkpoint: dict) -> dict:
    """What the checkpoint's model was trained to see: saved with its data, or its built-in dataset's entry."""
    saved = checkpoint.get("SemiSupervisedDataModule", {}).get("preprocessing")
    if saved:
        return saved
    info = DATASETS[{**S.defaults(["data"]), **checkpoint.get("swwae_config", {})}["dataset"]]
    channels, size, _ = info.image_shape
    return {
        "image_size": size,
        "channels": channels,
        "class_names": list(info.class_names),
        "mean": list(info.mean),
        "std": list(info.std),
    }


def _run_dir(checkpoint_path: Path) -> Path:
    parent = checkpoint_path.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def _run_data(cfg: dict, checkpoint: dict):
    """The data of the run the checkpoint comes from, with its own split."""
    from .training import build_datamodule

    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    if "SemiSupervisedDataModule" in checkpoint:
        datamodule.load_state_dict(checkpoint["SemiSupervisedDataModule"])
    return datamodule


def image_scores(module: SWWAEModule, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The logits of a batch and its unknown-class scores; the reconstruction's only where the decoder
    was trained (a model without a reconstruction term never ran it), the one-vs-all heads' only where
    the model has them."""
    net = module.evaluated_net
    if module.encoder_only:
        logits, open_set_logits = net.encode_open(x)
    else:  # one pass gives the logits (the encoder's own, bit for bit) and the reconstruction
        output = net(x)
        logits, open_set_logits = output.logits, output.open_set_logits
    scores = {"probability": probability_score(logits), "energy": energy_score(logits)}
    if not module.encoder_only:
        scores["reconstruction"] = reconstruction_score(output.reconstruction, x)
    if open_set_logits is not None:
        scores["one_vs_all"] = one_vs_all_score(open_set_logits, logits)
    return logits, scores


def score_to_use(module: SWWAEModule, asked: str) -> str:
    """The score ``--unknown-score`` names, once the model is known to give it."""
    has_heads = module.net.open_set is not None
    if asked == AUTO:
        return "one_vs_all" if has_heads else "probability"
    if asked == "reconstruction" and module.encoder_only:
        raise ValueError(
            "--unknown-score reconstruction needs a model whose decoder was trained (a reconstruction term, "
            "--lambda-rec > 0); this checkpoint's never ran: use probability or energy"
        )
    if asked == "one_vs_all" and not has_heads:
        raise ValueError(
            "--unknown-score one_vs_all needs a model trained with one-vs-all heads (--lambda-ova > 0); "
            "this checkpoint has none: use probability or energy"
        )
    return asked


def unknown_threshold(scores: torch.Tensor, rate: float) -> float:
    """The score above which at most ``rate`` of ``scores`` (the validation images', all of known classes) lie."""
    if rate <= 0 or not len(scores):
        return float("inf")
    ordered = scores.sort().values
    return float(ordered[max(0, math.ceil((1 - rate) * len(ordered)) - 1)])


def validation_scores(module: SWWAEModule, datamodule, pre: dict, score: str = "probability") -> torch.Tensor:
    """The unknown-class score ``score`` of every image of the run's own validation split."""
    scores = []
    with torch.no_grad():
        for images, _ in datamodule.val_dataloader():
            x = augment.normalize(images, tuple(pre["mean"]), tuple(pre["std"]))
            scores.append(image_scores(module, x)[1][score])
    return torch.cat(scores) if scores else torch.zeros(0)


def predict(cfg: dict, checkpoint: dict | None = None) -> dict:
    """Write the predictions CSV and the unreadable-files list (``checkpoint``: the file ``--predict`` names,
    already read); returns the summary's numbers."""
    from tqdm.auto import tqdm

    checkpoint_path = Path(cfg["predict"])
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(checkpoint_path)
    module = SWWAEModule.from_settings(**checkpoint["hyper_parameters"])
    load_measured_weights(module, checkpoint, checkpoint_path)
    module.eval()
    pre = preprocessing_of(checkpoint)
    names = pre["class_names"] or [str(c) for c in range(module.hparams.num_classes)]
    if cfg["images"]:
        root = Path(cfg["images"])
        if not root.is_dir():
            raise ValueError(f"--images {cfg['images']!r} is not a folder")
        unusable: list[tuple[tuple[str, ...], str]] = []  # FIFOs, link loops, names no text file can hold
        files = [root.joinpath(*parts) for parts, _ in files_under(root, unusable)]
        listed = [(root.joinpath(*parts), reason) for parts, reason in unusable]
    elif DATASETS[cfg["dataset"]].from_files:
        root, listed = Path(cfg["data_dir"]), []
    else:
        raise ValueError(
            f"--predict of a {cfg['dataset']!r} checkpoint needs --images DIR (only a folder "
            f"dataset's run has an unlabeled pool of files)"
        )
    datamodule = _run_data(cfg, checkpoint)
    if not cfg["images"]:
        files = [Path(p) for p in datamodule.unlabeled_paths()]
    score_name = score_to_use(module, cfg["unknown_score"])
    threshold = unknown_threshold(validation_scores(module, datamodule, pre, score_name), cfg["unknown_rate"])
    out = Path(cfg["out"]) if cfg["out"] else _run_dir(checkpoint_path) / "predictions.csv"
    unreadable_path = out.with_name(out.stem + ".unreadable.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    k = min(TOP_K, len(names))
    histogram, confident, unreadable, rows, correct, with_truth = Counter(), 0, listed, 0, 0, 0
    unknown = 0
    with open(out, "w", newline="", encoding="utf-8") as handle, torch.no_grad():
        writer = csv.writer(handle)
        writer.writerow(
            ["path", "predicted", "probability", f"top_{k}", "unknown_score", "label", *SCORE_COLUMNS.values()]
        )
        for start in tqdm(
            range(0, len(files), BATCH), desc="predicting", unit="batch", file=sys.stderr, disable=len(files) <= BATCH
        ):
            batch, kept = [], []
            for path in files[start : start + BATCH]:
                try:
                    batch.append(torch.from_numpy(decode(read_regular(path), pre["image_size"], pre["channels"])))
                    kept.append(path)
                except Exception as error:  # a file that does not decode is listed, never a crash
                    unreadable.append((path, failure_reason(error)))
            if not batch:
                continue
            x = augment.normalize(torch.stack(batch), tuple(pre["mean"]), tuple(pre["std"]))
            logits, scores = image_scores(module, x)
            probabilities = torch.softmax(logits.float(), dim=1)
            top_p, top_c = probabilities.topk(k, dim=1)
            chosen = scores[score_name].tolist()
            columns = [
                [f"{v:.6g}" for v in scores[name].tolist()] if name in scores else [""] * len(kept)
                for name in SCORE_COLUMNS
            ]
            for path, p, c, score, *each in zip(kept, top_p.tolist(), top_c.tolist(), chosen, *columns):
                label = UNKNOWN if score > threshold else names[c[0]]
                unknown += label == UNKNOWN
                top = ";".join(f"{names[ci]}:{pi:.6f}" for ci, pi in zip(c, p))
                writer.writerow([str(path), names[c[0]], f"{p[0]:.6f}", top, f"{score:.6g}", label, *each])
                histogram[names[c[0]]] += 1
                confident += p[0] > CONFIDENT
                truth = path.parent.name
                if truth in names:  # a folder per class: the folder names are the labels
                    with_truth += 1
                    correct += truth == names[c[0]]
            rows += len(kept)
    unreadable_path.write_text("".join(f"{printable(str(p))}\t{reason}\n" for p, reason in unreadable))
    summary = {
        "images": rows,
        "unreadable": len(unreadable),
        "histogram": dict(histogram.most_common()),
        "confident_share": confident / rows if rows else float("nan"),
        "unknown": unknown,
        "unknown_threshold": threshold,
        "csv": str(out),
        "error": 1 - correct / with_truth if with_truth == rows and rows else None,
    }
    line = (
        f"predicted {rows:,} images under {root} ({len(unreadable):,} unreadable, listed in {unreadable_path}); "
        f"classes: {', '.join(f'{n} {c:,}' for n, c in histogram.most_common())}; "
        f"{100 * summary['confident_share']:.1f}% above p={CONFIDENT}; "
        f"{unknown:,} labelled unknown ({score_name} score above {threshold:.4g}, which "
        f"{100 * cfg['unknown_rate']:g}% of the validation images pass)"
    )
    if summary["error"] is not None:
        line += f"; error against the class folders {100 * summary['error']:.2f}%"
    print(f"{line}; wrote {out}", flush=True)
    return summary
