"""Hostile or accidental folder trees: each bad thing is skipped and listed with its reason, or refused in one
line, and none hangs, exhausts memory, breaks a file the run writes, or loses the run.

Every tree is generated, tiny, in tmp_path; a test that would hang on a regression fails after a few seconds.
"""

import csv
import os
import signal
import socket
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from test_folder import SMALL, pattern, write_png

import train
from datamodules import folder
from datamodules.folder_dataset import describe


@contextmanager
def within(seconds: int):
    """A test that fails instead of hanging (a FIFO opened for reading blocks until a writer comes)."""

    def stop(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def small_tree(root: Path, per_class: int = 4, unlabeled: int = 4) -> Path:
    """labeled/a/, labeled/b/ and unlabeled/: the practitioner's layout, a few 8x8 images each."""
    for label, name in enumerate("ab"):
        for i in range(per_class):
            write_png(root / "labeled" / name / f"{i}.png", pattern(label, i))
    for i in range(unlabeled):
        write_png(root / "unlabeled" / f"u{i}.png", pattern(i % 2, 100 + i))
    return root


def settings(tree: Path) -> dict:
    return {"data_dir": str(tree), "image_size": 8, "channels": 1, "labels": None, "mode": "semi"}


def test_fifos_sockets_devices_and_huge_files_are_listed_never_opened_and_image_named_folders_are_walked(
    tmp_path, monkeypatch
):
    tree = small_tree(tmp_path / "tree")
    os.mkfifo(tree / "labeled" / "a" / "fifo.png")
    monkeypatch.chdir(tree / "unlabeled")  # a socket's path must be short: bind it relative to its folder
    server = socket.socket(socket.AF_UNIX)
    server.bind("socket.png")
    os.symlink("/dev/zero", tree / "unlabeled" / "zero.png")  # endless bytes, were it read
    with open(tree / "labeled" / "b" / "huge.png", "wb") as sparse:  # 4 GiB, sparse: no disk used, nothing read
        sparse.truncate(4 << 30)
    write_png(tree / "unlabeled" / "x.png" / "inside.png", pattern(0, 7))  # a folder named like an image
    (tree / "labeled" / "b" / "empty.png").mkdir()
    with within(10):
        _, _, entries, skipped = folder.index(tree)
    listed = dict(skipped)
    assert listed["labeled/a/fifo.png"] == "not a regular file (a FIFO)"
    assert listed["unlabeled/socket.png"] == "not a regular file (a socket)"
    assert listed["unlabeled/zero.png"] == "not a regular file (a character device)"
    assert listed["labeled/b/huge.png"].startswith("too large (")
    paths = [e.path for e in entries]  # a folder is walked, whatever its name
    assert "unlabeled/x.png/inside.png" in paths and len(paths) == 4 + 4 + 4 + 1
    # a file replaced by a FIFO after it was indexed is still never opened for reading: listed, no hang
    (tree / "labeled" / "a" / "3.png").unlink()
    os.mkfifo(tree / "labeled" / "a" / "3.png")
    with within(10):
        manifest, _ = folder.cached(tree, entries, 8, 1)
    assert dict(map(tuple, manifest["skipped"])) == {"labeled/a/3.png": "not a regular file (a FIFO)"}
    server.close()


def test_a_symbolic_link_loop_under_unlabeled_is_walked_once_and_listed(tmp_path):
    tree = small_tree(tmp_path / "tree")
    write_png(tree / "unlabeled" / "deep" / "d.png", pattern(1, 50))
    os.symlink("..", tree / "unlabeled" / "deep" / "up")  # unlabeled/deep/up/deep/up/... forever
    os.symlink(tree / "unlabeled", tree / "unlabeled" / "again")  # a second way into a folder already walked
    outside = tmp_path / "elsewhere"
    write_png(outside / "e.png", pattern(0, 60))
    os.symlink(outside, tree / "unlabeled" / "linked")  # a linked folder is followed
    with within(10):
        _, _, entries, skipped = folder.index(tree)
    unlabeled = sorted(e.path for e in entries if e.split == "unlabeled")
    assert unlabeled == ["unlabeled/deep/d.png", "unlabeled/linked/e.png", *(f"unlabeled/u{i}.png" for i in range(4))]
    assert dict(skipped) == {
        "unlabeled/again": "a folder already walked (a symbolic-link loop, or a second link to it)",
        "unlabeled/deep/up": "a folder already walked (a symbolic-link loop, or a second link to it)",
    }


def bomb(path: Path, width: int, height: int) -> None:
    """A valid 8x8 PNG whose header then claims ``width`` x ``height`` pixels (its CRC fixed to match)."""
    write_png(path, pattern(0, 0))
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_a_decompression_bomb_is_listed_and_never_decoded_whatever_pillows_own_limit(tmp_path, monkeypatch):
    tree = small_tree(tmp_path / "tree")
    bomb(tree / "labeled" / "a" / "bomb.png", 100_000, 100_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # a user switched Pillow's own check off
    with Image.open(tree / "labeled" / "a" / "bomb.png") as opened:
        assert opened.size == (100_000, 100_000)  # the header says ten billion pixels
    load = ImageFile.ImageFile.load

    def guarded(image):
        assert image.size[0] * image.size[1] < 10**9, "a decompression bomb was decoded"
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded)
    info = describe(settings(tree))
    skipped = dict(info.load(None, False, False).skipped)
    assert skipped["labeled/a/bomb.png"].startswith("too many pixels (100000x100000"), skipped
    assert info.image_shape == (1, 8, 8)
    with pytest.raises(ValueError) as raised:  # what --predict decodes with
        folder.decode((tree / "labeled" / "a" / "bomb.png").read_bytes(), 8, 1)
    assert folder.failure_reason(raised.value).startswith("too many pixels")


def test_names_with_line_breaks_commas_quotes_and_invalid_utf8_break_no_file_the_run_writes(tmp_path, capsys):
    tree = tmp_path / "tree"
    for label, name in enumerate("ab"):
        for i in range(8):
            write_png(tree / "train" / name / f"{i}.png", pattern(label, i))
        for i in range(2):
            write_png(tree / "test" / name / f"{i}.png", pattern(label, 500 + i))
    good = (tree / "train" / "a" / "0.png").read_bytes()
    folder_a = os.fsencode(tree / "train" / "a")
    for raw in (b"bad\xff.png", b"new\nline.png", b"tab\there.png"):
        Path(os.fsdecode(os.path.join(folder_a, raw))).write_bytes(good)
    (tree / "train" / "a" / 'comma, "quoted".png').write_bytes(good)  # an ordinary name: used
    (tree / "train" / "b" / 'broken, "quoted".png').write_bytes(b"not an image")
    run_dir = tmp_path / "run"
    argv = [*SMALL, "--data-dir", str(tree), "--labels", "4", "--val-size", "4", "--run-dir", str(run_dir)]
    assert train.main(argv) == 0
    assert "skipped 4 of 25 files" in capsys.readouterr().err
    lines = (run_dir / "skipped_files.txt").read_text(encoding="utf-8").splitlines()
    assert all(line.count("\t") == 1 for line in lines) and len(lines) == 4  # one line, two fields each
    listed = dict(line.split("\t") for line in lines)
    assert listed == {
        "train/a/bad\\xff.png": "name is not valid UTF-8",
        "train/a/new\\nline.png": "name holds a line break or a control character",
        "train/a/tab\\there.png": "name holds a line break or a control character",
        'train/b/broken, "quoted".png': "not an image Pillow can decode",
    }
    out = tmp_path / "predictions.csv"
    predicted = ["--predict", str(run_dir / "checkpoints" / "last.ckpt"), "--images", str(tree / "train" / "a")]
    assert train.main([*predicted, "--out", str(out)]) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(row["path"]).name for row in rows) == [*(f"{i}.png" for i in range(8)), 'comma, "quoted".png']


def test_a_truncated_or_half_written_cache_is_rebuilt_and_a_removed_image_changes_only_the_next_start(tmp_path):
    tree = small_tree(tmp_path / "tree")
    first = describe(settings(tree)).load(None, False, False)
    pixels = first.train_images[:]
    (data,) = (tree / folder.CACHE_FOLDER).glob("*.u8")
    size = data.stat().st_size
    os.truncate(data, size // 2)  # a crash or a full disk left half of it
    with pytest.raises(OSError, match="truncated"):  # a run reading it now gets a clear error, never garbage
        first.train_images[:]
    again = describe(settings(tree)).load(None, False, False)  # the next start checks the size and rebuilds
    assert data.stat().st_size == size and np.array_equal(again.train_images[:], pixels)
    (manifest,) = (tree / folder.CACHE_FOLDER).glob("*.json")
    manifest.write_text(manifest.read_text()[:40])  # a manifest cut short
    _, _, entries, _ = folder.index(tree)
    rebuilt, path = folder.cached(tree, entries, 8, 1)
    assert len(rebuilt["paths"]) == 12 and path.stat().st_size == size
    data.unlink()  # a manifest without its data
    assert folder.cached(tree, entries, 8, 1)[1].stat().st_size == size

    view = again.train_images
    data.unlink()  # the cache itself removed while a run reads it: the run reads the file it opened
    assert np.array_equal(view.subset(np.arange(len(pixels)))[:], pixels)
    (tree / "labeled" / "a" / "0.png").unlink()  # a source image removed: a running run reads only its cache
    assert np.array_equal(view[:], pixels)
    after = describe(settings(tree)).load(None, False, False)  # the next start indexes the files anew
    assert len(after.train_images) == len(pixels) - 1
