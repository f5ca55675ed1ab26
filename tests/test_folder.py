"""Your own images: both folder layouts, every file kind, bad files, the cache, resume, DDP shards, --predict.

Every image here is generated (no natural-image dataset is reachable from the test machine).
"""

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NO_PICTURES
from PIL import Image

import train
from datamodules import folder
from datamodules.folder_dataset import describe
from datamodules.semi_supervised import SemiSupervisedDataModule

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("a cat", "chien", "café", "dog")  # spaces and non-ASCII characters in class names


def pattern(label: int, i: int, size: int = 8) -> np.ndarray:
    """Class c is a bright quadrant c on noise: learnable in a few steps."""
    rng = np.random.default_rng(1000 * label + i)
    image = rng.integers(0, 60, (size, size), dtype=np.uint8)
    half = size // 2
    r, c = divmod(label, 2)
    image[r * half : (r + 1) * half, c * half : (c + 1) * half] += 180
    return image


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def academic_tree(root: Path, train: int = 60, test: int = 20) -> Path:
    for split, n in (("train", train), ("test", test)):
        for label, name in enumerate(CLASSES):
            for i in range(n):
                write_png(root / split / name / f"{i:03d}.png", pattern(label, i + (0 if split == "train" else 500)))
    return root


def practitioner_tree(root: Path, labeled: int = 20, unlabeled: int = 120, val: bool = True, test: bool = True) -> Path:
    for label, name in enumerate(CLASSES):
        for i in range(labeled):
            write_png(root / "labeled" / name / f"{i:03d}.png", pattern(label, i))
        if val:
            for i in range(10):
                write_png(root / "val" / name / f"{i:03d}.png", pattern(label, 300 + i))
        if test:
            for i in range(10):
                write_png(root / "test" / name / f"{i:03d}.png", pattern(label, 600 + i))
    for i in range(unlabeled):  # any depth, no classes
        write_png(root / "unlabeled" / f"batch{i % 3}" / "deeper" / f"{i:04d}.png", pattern(i % 4, 900 + i))
    return root


SMALL = [
    "--dataset",
    "folder",
    "--image-size",
    "8",
    "--arch",
    "4C3-MP2-8C3-MP2-FC16",
    "--batch-size",
    "8",
    "--unlabeled-batch-size",
    "16",
    "--logger",
    "csv",
    "--max-epochs",
    "1",
    *NO_PICTURES,
    "--test",
]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# ----------------------------------------------------------------------------- layouts
def test_the_academic_layout_draws_labels_from_train_and_the_rest_is_the_unlabeled_pool(tmp_path):
    tree = academic_tree(tmp_path / "tree")
    run_dir = tmp_path / "run"
    assert (
        train.main([*SMALL, "--data-dir", str(tree), "--labels", "40", "--val-size", "40", "--run-dir", str(run_dir)])
        == 0
    )
    split = json.loads((run_dir / "split.json").read_text())
    assert split["labeled_per_class"] == [10, 10, 10, 10]
    assert split["unlabeled_pool_size"] == 4 * 60 - 40 - 40
    recorded = results(run_dir)
    assert 0 <= recorded["test_error"] <= 1 and recorded["torch_threads"] == torch.get_num_threads()
    assert recorded["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert recorded["torch_version"] == torch.__version__
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    saved = checkpoint["SemiSupervisedDataModule"]["preprocessing"]
    assert saved["class_names"] == sorted(CLASSES) and saved["image_size"] == 8 and saved["channels"] == 1


def test_the_practitioners_layout_uses_its_val_folder_and_without_test_reports_validation_error(tmp_path, capsys):
    tree = practitioner_tree(tmp_path / "tree", test=False)
    run_dir = tmp_path / "run"
    assert train.main([*SMALL, "--data-dir", str(tree), "--labels", "all", "--run-dir", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert (
        f"{tree.resolve()} has no test/ folder (or no readable image in it): this run reports validation error only"
        in err
    )
    split = json.loads((run_dir / "split.json").read_text())
    assert split["labeled_per_class"] == [20, 20, 20, 20] and len(split["val_indices"]) == 40  # val/ is validation
    assert split["unlabeled_pool_size"] == 120
    found = results(run_dir)
    assert "test_error" not in found and 0 <= found["val_error"] <= 1


def test_without_a_val_folder_validation_is_held_out_from_the_labeled_images(tmp_path):
    tree = practitioner_tree(tmp_path / "tree", val=False)
    info = describe({"data_dir": str(tree), "image_size": 8, "channels": None, "labels": 40, "mode": "semi"})
    datamodule = SemiSupervisedDataModule(dataset="folder", data_dir=str(tree), image_size=8, labels=40, val_size=20)
    datamodule.setup("fit")
    assert info.num_classes == 4 and datamodule.splits.val_indices is None
    assert len(datamodule.val_indices) == 20 and len(datamodule.labeled_indices) == 40
    assert not set(datamodule.val_indices.tolist()) & set(datamodule.labeled_indices.tolist())


# ----------------------------------------------------------------------------- file kinds
def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def test_every_file_kind_decodes_to_the_expected_pixels():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    rgb = Image.merge("RGB", [gray, gray.transpose(Image.FLIP_LEFT_RIGHT), gray.transpose(Image.FLIP_TOP_BOTTOM)])
    expected_gray = np.asarray(gray)[None]
    expected_rgb = np.asarray(rgb).transpose(2, 0, 1)
    for fmt in ("PNG", "BMP", "TIFF", "WEBP"):  # lossless ones decode exactly
        options = {"lossless": True} if fmt == "WEBP" else {}
        assert np.array_equal(folder.decode(encoded(rgb, fmt, **options), 8, 3), expected_rgb), fmt
        assert np.array_equal(folder.decode(encoded(gray, fmt, **options), 8, 1), expected_gray), fmt
    jpeg = folder.decode(encoded(rgb, "JPEG", quality=95), 8, 3)
    assert np.abs(jpeg.astype(int) - expected_rgb).mean() < 8  # lossy, close
    rgba = rgb.copy()
    rgba.putalpha(128)
    assert np.array_equal(folder.decode(encoded(rgba, "PNG"), 8, 3), expected_rgb)  # alpha dropped
    palette = rgb.convert("P", palette=Image.ADAPTIVE, colors=256)
    assert np.array_equal(
        folder.decode(encoded(palette, "PNG"), 8, 3), np.asarray(palette.convert("RGB")).transpose(2, 0, 1)
    )
    sixteen = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024 + 1023))  # 16-bit gray
    assert sixteen.mode.startswith("I;16")
    assert np.array_equal(
        folder.decode(encoded(sixteen, "PNG"), 8, 1)[0],
        np.rint((np.arange(64).reshape(8, 8) * 1024 + 1023) * 255 / 65535).astype(np.uint8),
    )
    frames = [Image.fromarray(np.full((8, 8), v, dtype=np.uint8)) for v in (10, 200)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    assert (folder.decode(gif.getvalue(), 8, 1) == 10).all()  # the first frame
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated = folder.decode(encoded(gray, "JPEG", quality=100, exif=exif.tobytes()), 8, 1)
    assert np.abs(rotated[0].astype(int) - np.rot90(np.asarray(gray), k=-1)).mean() < 4
    # grayscale as 3 channels and colour as 1, then the shorter side resized and the centre cropped
    assert np.array_equal(folder.decode(encoded(gray, "PNG"), 8, 3), np.repeat(expected_gray, 3, axis=0))
    wide = Image.fromarray(
        np.concatenate([np.zeros((8, 4), np.uint8), np.asarray(gray), np.zeros((8, 4), np.uint8)], 1)
    )
    assert np.array_equal(folder.decode(encoded(wide, "PNG"), 8, 1), expected_gray)  # 16x8 -> centre 8x8
    assert folder.decode(encoded(gray, "PNG"), 4, 1).shape == (1, 4, 4)


def test_mixed_sizes_colour_jpegs_and_upper_case_extensions_train_at_the_chosen_size(tmp_path):
    tree = tmp_path / "tree"
    rng = np.random.default_rng(0)
    sides = []
    for split, n in (("train", 30), ("test", 8)):
        for label, name in enumerate(("red", "green")):
            for i in range(n):
                side = int(rng.integers(20, 60))
                sides += [side] if split == "train" else []
                pixels = rng.integers(0, 80, (side, side + 7, 3), dtype=np.uint8)
                pixels[..., label] += 150
                path = tree / split / name / f"{i}.{'JPG' if i % 2 else 'png'}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path, "JPEG" if i % 2 else "PNG")
    info = describe({"data_dir": str(tree), "image_size": None, "channels": None, "labels": 10, "mode": "semi"})
    nearest = min((28, 32, 96), key=lambda s: abs(s - np.median(sides)))
    assert 30 < np.median(sides) < 60 and nearest == 32
    assert info.image_shape == (3, 32, 32)  # colour images; 32 is the preset nearest their median shorter side
    assert info.class_names == ("green", "red") and info.preset  # a preset network for 32 px
    run_dir = tmp_path / "run"
    assert (
        train.main(
            [
                "--dataset",
                "folder",
                "--data-dir",
                str(tree),
                "--labels",
                "10",
                "--val-size",
                "10",
                "--batch-size",
                "8",
                "--unlabeled-batch-size",
                "8",
                "--logger",
                "csv",
                "--max-epochs",
                "1",
                "--limit-train-batches",
                "2",
                "--arch",
                "4C3-MP2-8C3-MP2-FC16",
                "--run-dir",
                str(run_dir),
            ]
        )
        == 0
    )


def test_a_96_px_tree_gets_the_stl10_preset(tmp_path):
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        for label, name in enumerate(("x", "y")):
            for i in range(3):
                write_png(tree / split / name / f"{i}.png", np.full((100, 120, 3), 40 + 100 * label, np.uint8))
    info = describe({"data_dir": str(tree), "image_size": None, "channels": None, "labels": 2, "mode": "semi"})
    assert info.image_shape == (3, 96, 96) and info.preset.startswith("(64)3c-4p")


# ----------------------------------------------------------------------------- bad files
def test_bad_files_are_skipped_listed_with_their_reasons_and_training_goes_on(tmp_path, capsys):
    tree = academic_tree(tmp_path / "tree")
    (tree / "train" / "dog" / "empty.png").write_bytes(b"")
    good = (tree / "train" / "dog" / "000.png").read_bytes()
    (tree / "train" / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tree / "train" / "café" / "notes.txt").write_text("not an image")
    (tree / "train" / "loose.png").write_bytes(good)  # not inside a class folder
    run_dir = tmp_path / "run"
    assert (
        train.main([*SMALL, "--data-dir", str(tree), "--labels", "40", "--val-size", "40", "--run-dir", str(run_dir)])
        == 0
    )
    err = capsys.readouterr().err
    assert "skipped 4 of 324 files" in err and "skipped_files.txt" in err
    listed = dict(line.split("\t") for line in (run_dir / "skipped_files.txt").read_text().splitlines())
    assert listed == {
        "train/dog/empty.png": "empty file (0 bytes)",
        "train/café/notes.txt": "not an image Pillow can decode",
        "train/loose.png": "not inside a class folder of train/",
        "train/dog/truncated.png": listed["train/dog/truncated.png"],
    }
    assert "truncated" in listed["train/dog/truncated.png"] or "broken" in listed["train/dog/truncated.png"].lower()


def test_a_file_corrupted_between_epochs_neither_stops_the_run_nor_is_used_by_the_next(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    from orchestration import trainer as trainer_module

    tree = academic_tree(tmp_path / "tree")

    class CorruptAfterFirstEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                (tree / "train" / "chien" / "007.png").write_bytes(b"\x89PNG garbage")  # changed on disk

    monkeypatch.setattr(trainer_module, "image_callbacks", lambda cfg, run_dir: [CorruptAfterFirstEpoch()])
    assert (
        train.main(
            [
                *SMALL,
                "--data-dir",
                str(tree),
                "--labels",
                "40",
                "--val-size",
                "40",
                "--max-epochs",
                "2",
                "--run-dir",
                str(tmp_path / "first"),
            ]
        )
        == 0
    )  # the second epoch reads the cached pixels
    assert results(tmp_path / "first")["epochs"] == 2
    assert not (tmp_path / "first" / "skipped_files.txt").exists()
    assert (
        train.main(
            [
                *SMALL,
                "--data-dir",
                str(tree),
                "--labels",
                "40",
                "--val-size",
                "40",
                "--run-dir",
                str(tmp_path / "second"),
            ]
        )
        == 0
    )  # the next start decodes it again
    listed = (tmp_path / "second" / "skipped_files.txt").read_text()
    assert listed.startswith("train/chien/007.png\t")


def test_test_images_that_repeat_training_files_are_counted_as_leakage(tmp_path, capsys):
    tree = academic_tree(tmp_path / "tree")
    for i in range(3):
        (tree / "test" / "dog" / f"copy{i}.png").write_bytes((tree / "train" / "dog" / f"00{i}.png").read_bytes())
    describe({"data_dir": str(tree), "image_size": 8, "channels": 1, "labels": 40, "mode": "semi"})
    assert "warning: 3 file(s) under" in capsys.readouterr().err


BAD = {
    "no images": (
        lambda root: (root / "train" / "a").mkdir(parents=True) or (root / "train" / "b").mkdir(),
        "holds no files under train/",
    ),
    "one class": (
        lambda root: write_png(root / "train" / "only" / "0.png", pattern(0, 0)),
        "holds 1 class folder(s) ['only']: a classifier needs 2 or more",
    ),
    "a class without a readable image": (
        lambda root: (
            [write_png(root / "train" / "good" / f"{i}.png", pattern(0, i)) for i in range(4)]
            + [(root / "train" / "bad").mkdir(), (root / "train" / "bad" / "x.png").write_bytes(b"nope")]
        ),
        "train/bad has no readable image (1 file(s), none of which decodes)",
    ),
    "fewer labeled images than --labels": (
        lambda root: academic_tree(root, train=5, test=1),
        "--labels 40 asks for 10 images of each of the 4 classes, but",
    ),
    "neither layout": (
        lambda root: write_png(root / "pictures" / "0.png", pattern(0, 0)),
        "has neither train/<class>/ (the academic layout) nor labeled/<class>/",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_a_folder_that_cannot_make_a_dataset_is_one_line_exit_2_and_no_run(case, tmp_path, capsys, monkeypatch):
    make, expected = BAD[case]
    tree = tmp_path / "tree"
    tree.mkdir()
    make(tree)
    monkeypatch.chdir(tmp_path)
    assert train.main([*SMALL, "--data-dir", str(tree), "--labels", "40", "--val-size", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1], err
    assert not (tmp_path / "runs").exists()


def test_image_size_on_a_built_in_dataset_and_a_size_without_preset_are_one_line(tmp_path, capsys):
    assert train.main(["--dataset", "mnist", "--image-size", "32"]) == 2
    assert "--image-size applies to --dataset folder only, not 'mnist'" in capsys.readouterr().err
    tree = academic_tree(tmp_path / "tree")
    assert train.main(["--dataset", "folder", "--data-dir", str(tree), "--image-size", "8", "--labels", "40"]) == 2
    assert "--image-size 8 has no preset network" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the cache
def test_the_cache_is_reused_rebuilt_when_a_file_changes_and_built_once_by_two_processes_at_once(tmp_path):
    tree = academic_tree(tmp_path / "tree", train=10, test=2)
    _, _, entries, _ = folder.index(tree)
    manifest, data = folder.cached(tree, entries, 8, 1)
    built = data.stat().st_mtime_ns
    again, data_again = folder.cached(tree, entries, 8, 1)
    assert data_again == data and data.stat().st_mtime_ns == built and again == manifest  # reused
    os.utime(tree / "train" / "dog" / "003.png", ns=(1, 1))  # a changed mtime is a new cache
    _, _, changed, _ = folder.index(tree)
    assert folder.cache_key(changed, 8, 1) != folder.cache_key(entries, 8, 1)
    assert folder.cached(tree, changed, 8, 1)[1] != data

    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from datamodules import folder
        build = folder.build_cache
        def counted(*args):
            with open({str(tmp_path / "builds")!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(1)  # long enough for the other process to arrive and wait
            return build(*args)
        folder.build_cache = counted
        tree = Path({str(tree)!r})
        _, _, entries, _ = folder.index(tree)
        manifest, data = folder.cached(tree, entries, 6, 1)
        print(data, len(manifest["paths"]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outputs[0] == outputs[1] and outputs[0].endswith(" 48")
    assert len((tmp_path / "builds").read_text().split()) == 1  # one process built, the other waited and reused


def test_disk_images_read_batches_exactly_and_views_read_nothing_until_indexed(tmp_path):
    path = tmp_path / "images.u8"
    array = np.arange(5 * 2 * 3 * 3, dtype=np.uint8).reshape(5, 2, 3, 3)
    path.write_bytes(array.tobytes())
    images = folder.DiskImages(path, (2, 3, 3), np.arange(5))
    view = images.subset(torch.tensor([4, 1, 3]))
    assert view.shape == (3, 2, 3, 3)
    assert torch.equal(view[torch.tensor([2, 0])], torch.from_numpy(array[[3, 4]]))
    assert torch.equal(view.concat(images.subset([0]))[:], torch.from_numpy(array[[4, 1, 3, 0]]))


# ----------------------------------------------------------------------------- resume and DDP
def test_a_folder_run_interrupted_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    from test_fault_tolerance import StopAt, final_state

    from orchestration import trainer as trainer_module

    tree = academic_tree(tmp_path / "tree")
    added = []
    monkeypatch.setattr(trainer_module, "image_callbacks", lambda cfg, run_dir: list(added))
    argv = [
        *SMALL,
        "--data-dir",
        str(tree),
        "--labels",
        "40",
        "--val-size",
        "40",
        "--max-epochs",
        "2",
        "--deterministic",
    ]
    seen_full, seen_split = [], []
    added[:] = [StopAt(seen=seen_full)]
    assert train.main([*argv, "--run-dir", str(tmp_path / "full")]) == 0
    added[:] = [StopAt(epoch=0, batch=3, seen=seen_split)]
    with pytest.raises(SystemExit):
        train.main([*argv, "--run-dir", str(tmp_path / "split")])
    added[:] = [StopAt(seen=seen_split)]
    assert train.main(["--resume", "last", "--run-dir", str(tmp_path / "split")]) == 0
    assert sorted(seen_split) == sorted(seen_full)
    full, split = final_state(tmp_path / "full"), final_state(tmp_path / "split")
    for key, value in full["state_dict"].items():
        assert torch.equal(value, split["state_dict"][key]), key


def test_two_ranks_get_disjoint_shards_of_both_folder_streams(tmp_path):
    tree = practitioner_tree(tmp_path / "tree")
    seen = {"labeled": [], "unlabeled": []}
    for rank in range(2):
        datamodule = SemiSupervisedDataModule(
            dataset="folder", data_dir=str(tree), image_size=8, labels=80, batch_size=8, unlabeled_batch_size=16
        )
        datamodule.setup("fit")
        datamodule._rank_world = lambda rank=rank: (rank, 2)
        for name, stream in datamodule.train_streams().items():
            for indices in stream.sampler.batches():
                seen[name].append((rank, tuple(indices.tolist())))
    unlabeled = {r: {i for rr, batch in seen["unlabeled"] if rr == r for i in batch} for r in range(2)}
    assert not unlabeled[0] & unlabeled[1] and len(unlabeled[0] | unlabeled[1]) == 120
    labeled = {r: {i for rr, batch in seen["labeled"] if rr == r for i in batch} for r in range(2)}
    assert not labeled[0] & labeled[1] and labeled[0] | labeled[1] <= set(range(80))  # each rank its own shard


def test_a_resumed_run_keeps_its_preprocessing_and_refuses_another_image_size_in_one_line(tmp_path, capsys):
    tree = academic_tree(tmp_path / "tree")
    run_dir = tmp_path / "run"
    assert (
        train.main([*SMALL, "--data-dir", str(tree), "--labels", "40", "--val-size", "40", "--run-dir", str(run_dir)])
        == 0
    )
    capsys.readouterr()
    assert train.main(["--run-dir", str(run_dir), "--resume", "last", "--image-size", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --image-size 16 differs from the checkpoint's 8: a resumed run keeps the preprocessing "
        "its model was trained with"
    )
    (tree / "train" / "dog" / "000.png").unlink()  # the split's indices would now point at other files
    assert train.main(["--run-dir", str(run_dir), "--resume", "last"]) == 2
    assert "changed since this run started (readable training files now: 239)" in capsys.readouterr().err
    write_png(tree / "train" / "dog" / "000.png", pattern(3, 0))
    # fine-tuned on other images of the same classes: the checkpoint's size, channels, mean and std, its own names
    other = academic_tree(tmp_path / "other", train=40, test=5)
    for path in (other / "train").rglob("*.png"):
        write_png(path, np.asarray(Image.open(path)) // 2)  # darker: other statistics
    tuned = tmp_path / "tuned"
    assert (
        train.main(
            [
                *SMALL[:2],
                "--data-dir",
                str(other),
                *SMALL[4:],
                "--labels",
                "40",
                "--val-size",
                "20",
                "--finetune-from",
                str(run_dir / "checkpoints" / "last.ckpt"),
                "--run-dir",
                str(tuned),
            ]
        )
        == 0
    )
    first, second = (json.loads((d / "preprocessing.json").read_text()) for d in (run_dir, tuned))
    assert second == first and second["image_size"] == 8


# ----------------------------------------------------------------------------- labels back
def test_predict_writes_exact_rows_and_its_error_on_a_labeled_folder_equals_evaluate(tmp_path, capsys):
    tree = practitioner_tree(tmp_path / "tree")
    run_dir = tmp_path / "run"
    assert train.main([*SMALL, "--data-dir", str(tree), "--labels", "all", "--run-dir", str(run_dir)]) == 0
    best = str(run_dir / "checkpoints" / "best.ckpt")
    (tree / "test" / "dog" / "broken.png").write_bytes(b"")  # one file the test split never had
    out = tmp_path / "test-predictions.csv"
    assert train.main(["--predict", best, "--images", str(tree / "test"), "--out", str(out)]) == 0
    said = capsys.readouterr().out.strip().splitlines()[-1]
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert len(rows) == 40 and set(rows[0]) == {
        "path",
        "predicted",
        "probability",
        "top_3",
        "unknown_score",
        "label",
        "minus_log_probability",
        "energy",
        "reconstruction_error",
        "one_vs_all",
    }
    assert (
        tmp_path / "test-predictions.unreadable.txt"
    ).read_text() == f"{tree / 'test' / 'dog' / 'broken.png'}\tempty file (0 bytes)\n"
    # exact: each row is the model's own softmax on that file, decoded and normalized as in training
    from datamodules import augment
    from swwae_lightning.module import SWWAEModule

    checkpoint = torch.load(best, weights_only=True)
    module = SWWAEModule.from_settings(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    pre = checkpoint["SemiSupervisedDataModule"]["preprocessing"]
    for row in rows[:5]:
        x = torch.from_numpy(folder.decode(Path(row["path"]).read_bytes(), 8, 1))[None]
        with torch.no_grad():
            logits = module(augment.normalize(x, tuple(pre["mean"]), tuple(pre["std"])))
        p = torch.softmax(logits, dim=1)[0]
        assert row["predicted"] == pre["class_names"][int(p.argmax())]
        assert float(row["probability"]) == pytest.approx(float(p.max()), abs=1e-6)
        assert float(row["energy"]) == pytest.approx(-float(torch.logsumexp(logits[0], 0)), rel=1e-5)
        assert float(row["reconstruction_error"]) > 0  # the default terms train the decoder
        assert row["one_vs_all"] == ""  # no one-vs-all heads
        assert row["unknown_score"] == row["minus_log_probability"]  # auto: the probability's, without heads
    assert train.main(["--evaluate", best, "--data-dir", str(tree)]) == 0
    evaluated = json.loads((run_dir / "checkpoints" / "results.json").read_text())["test_error"]
    assert said.startswith("predicted 40 images under") and "1 unreadable" in said
    assert f"error against the class folders {100 * evaluated:.2f}%" in said

    # unknown: rows whose score is above the threshold that 5 % of the run's own validation images pass
    from orchestration import predict

    datamodule = predict._run_data(train.resolve_config(["--predict", best]), checkpoint)
    validation = predict.validation_scores(module, datamodule, pre)
    assert len(validation) == len(datamodule.val_indices) > 0
    threshold = predict.unknown_threshold(validation, 0.05)
    assert (validation > threshold).float().mean() <= 0.05 < (validation >= threshold).float().mean()
    assert f"labelled unknown (probability score above {threshold:.4g}, which 5% of the validation images pass)" in said
    for row in rows:
        assert (row["label"] == "unknown") == (float(row["unknown_score"]) > float(f"{threshold:.6g}"))
        assert row["label"] in ("unknown", row["predicted"])

    # without --images: the run's own unlabeled pool, into predictions.csv in the run directory
    assert train.main(["--predict", best]) == 0
    assert len(list(csv.DictReader(open(run_dir / "predictions.csv", encoding="utf-8")))) == 120


def test_predict_on_a_built_in_datasets_checkpoint_needs_images(tmp_path, capsys, tiny_dataset):
    run_dir = tmp_path / "run"
    assert (
        train.main(
            [
                "--dataset",
                tiny_dataset,
                "--labels",
                "40",
                "--val-size",
                "50",
                "--batch-size",
                "8",
                "--unlabeled-batch-size",
                "16",
                "--arch",
                "4C3-MP2-8C3-MP2-FC16",
                "--logger",
                "csv",
                "--max-epochs",
                "1",
                "--limit-train-batches",
                "2",
                "--run-dir",
                str(run_dir),
            ]
        )
        == 0
    )
    assert train.main(["--predict", str(run_dir / "checkpoints" / "last.ckpt")]) == 2
    assert "needs --images DIR" in capsys.readouterr().err
    images = tmp_path / "mine"
    for i in range(3):
        write_png(images / f"{i}.png", pattern(i, 0))
    assert train.main(["--predict", str(run_dir / "checkpoints" / "last.ckpt"), "--images", str(images)]) == 0
    rows = list(csv.DictReader(open(run_dir / "predictions.csv")))
    assert len(rows) == 3 and all(r["predicted"] in {"0", "1", "2", "3"} for r in rows)


def test_the_exporter_writes_the_academic_layout_and_the_folder_dataset_reads_back_the_same_pixels(
    tmp_path, tiny_dataset
):
    from conftest import make_tiny_splits

    from datamodules.export_folder import class_folder, export

    assert class_folder("T-shirt/top") == "T-shirt or top"
    counts = export(tiny_dataset, tmp_path / "tree")
    assert counts == {"train": 400, "test": 100}
    assert sorted(p.name for p in (tmp_path / "tree" / "train").iterdir()) == ["0", "1", "2", "3"]
    info = describe({"data_dir": str(tmp_path / "tree"), "image_size": 8, "channels": 1, "labels": 40, "mode": "semi"})
    splits, original = info.load(None, False, False), make_tiny_splits()
    # the files sort by class, then by their index in the split: the same images, grouped by class
    order = torch.argsort(original.test_labels * 1000 + torch.arange(100))
    assert torch.equal(splits.test_images[:], original.test_images[order])
    assert torch.equal(splits.test_labels, original.test_labels[order])


def test_the_mismatch_exporter_keeps_the_pool_size_hides_its_truth_and_labels_known_classes_only(
    tmp_path, tiny_dataset
):
    from datamodules import export_mismatch

    trees = {}
    for share in (0.0, 0.5, 1.0):
        out = tmp_path / f"mismatch-{share}"
        assert (
            export_mismatch.main(
                [
                    "--dataset",
                    tiny_dataset,
                    "--out",
                    str(out),
                    "--known",
                    "0",
                    "1",
                    "--unknown-share",
                    str(share),
                    "--pool",
                    "60",
                    "--labels-per-class",
                    "5",
                    "--val-per-class",
                    "10",
                ]
            )
            == 0
        )
        truth = list(csv.DictReader(open(out / export_mismatch.TRUTH, encoding="utf-8")))
        trees[share] = truth
        assert (
            sorted(p.name for p in (out / "labeled").iterdir())
            == ["0", "1"]
            == sorted(p.name for p in (out / "val").iterdir())
            == sorted(p.name for p in (out / "test").iterdir())
        )
        assert len(list((out / "labeled").rglob("*.png"))) == 10 and len(list((out / "val").rglob("*.png"))) == 20
        assert len(list((out / "test").rglob("*.png"))) == 50  # every test image of classes 0 and 1
        assert len(truth) == len(list((out / "unlabeled").glob("*.png"))) == 60  # a fixed pool, whatever the share
        assert sum(r["kind"] == "unknown" for r in truth) == round(60 * share)
        assert all((r["kind"] == "unknown") == (r["class"] in ("2", "3")) for r in truth)
        _, classes, entries, _ = folder.index(out)  # the truth file is hidden: the dataset never reads it
        assert classes == ["0", "1"] and not any("truth" in e.path for e in entries)
    # a skewed pool: its known classes 10:1, first to last
    assert export_mismatch.pool_mix([0, 1], 110, 0.0, 10.0) == {"0": 100, "1": 10, "unknown": 0}
    assert export_mismatch.pool_mix([0, 1, 2], 60, 0.5, 1.0) == {"0": 10, "1": 10, "2": 10, "unknown": 30}
    assert export_mismatch.main(["--dataset", tiny_dataset, "--out", str(tmp_path / "x"), "--unknown-share", "2"]) == 2
    assert not (tmp_path / "x").exists()


def test_the_per_channel_mean_and_std_are_those_of_the_training_images(tmp_path):
    path = tmp_path / "images.u8"
    array = np.random.default_rng(0).integers(0, 256, (300, 3, 4, 4), dtype=np.uint8)
    path.write_bytes(array.tobytes())
    images = folder.DiskImages(path, (3, 4, 4), np.arange(300))
    mean, std = folder.channel_stats(images, np.arange(100, 300))  # a sample of at most 10,000: all 200 here
    scaled = array[100:].astype(np.float64) / 255
    assert mean == pytest.approx(tuple(scaled.mean(axis=(0, 2, 3))), abs=1e-6)
    assert std == pytest.approx(tuple(scaled.std(axis=(0, 2, 3))), abs=1e-6)


SEEN_PLUGIN = '''
import hashlib, os
from swwae_lightning import TERMS, LossTerm, Setting

@TERMS.register
class Seen(LossTerm):
    """Writes which unlabeled images this rank trained on; adds nothing to the loss."""
    name = "seen"
    weight = Setting("lambda_seen", 0.0, "weight of seen", "objectives", type=float)
    needs = frozenset({"unlabeled"})

    def __call__(self, step):
        with open(os.environ["SEEN_DIR"] + f"/rank{os.environ.get('LOCAL_RANK', '0')}.txt", "a") as f:
            for image in step.unlabeled:
                f.write(hashlib.sha1(image.numpy().tobytes()).hexdigest() + "\\n")
        return step.unlabeled.sum() * 0
'''


def test_a_two_process_ddp_run_of_a_folder_trains_each_rank_on_its_own_half_of_the_pool(tmp_path):
    tree = practitioner_tree(tmp_path / "tree", unlabeled=128)
    (tmp_path / "seen.py").write_text(SEEN_PLUGIN)
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            *SMALL,
            "--data-dir",
            str(tree),
            "--labels",
            "all",
            "--no-augment",
            "--lambda-rec",
            "0",
            "--lambda-mid",
            "0",
            "--lambda-seen",
            "1",
            "--plugins",
            str(tmp_path / "seen.py"),
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "SEEN_DIR": str(tmp_path)},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    seen = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 64  # 128 images, 16 a step, 4 steps on each rank
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 128  # disjoint, all of the pool


def test_the_unknown_threshold_lets_the_given_share_of_validation_scores_above_it():
    from orchestration.predict import unknown_threshold
    from swwae_lightning.unknown_scores import probability_score as unknown_score

    scores = torch.arange(100, dtype=torch.float32)
    assert unknown_threshold(scores, 0.05) == 94.0  # 95..99 lie above: 5 of 100
    assert unknown_threshold(scores, 0.5) == 49.0 and unknown_threshold(scores, 0) == float("inf")
    confident, unsure = unknown_score(torch.tensor([[30.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    assert 0 < confident < 1e-12 and unsure == pytest.approx(float(torch.log(torch.tensor(3.0))))


def test_hflip_turns_a_folders_flips_off_for_digits_and_applies_to_folders_only(tmp_path, capsys):
    tree = practitioner_tree(tmp_path / "tree")
    flips = SemiSupervisedDataModule(dataset="folder", data_dir=str(tree), image_size=8, labels=40)
    assert flips.info.hflip is True  # a folder's objects mostly keep their class when flipped
    digits = SemiSupervisedDataModule(dataset="folder", data_dir=str(tree), image_size=8, labels=40, hflip=False)
    assert digits.info.hflip is False and flips.info.hflip is True  # the described folder is not changed for both
    assert train.main(["--no-hflip", "--max-epochs", "1"]) == 2
    assert "--hflip applies to --dataset folder only, not 'mnist'" in capsys.readouterr().err
