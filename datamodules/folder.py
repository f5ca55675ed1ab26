"""Your own images: a folder tree in torchvision's ImageFolder convention, checked file by file and
decoded once into a uint8 cache on disk that every later epoch, run and rank reads.

Two layouts: the academic ``train/<class>/``, ``test/<class>/`` (``--labels N`` is drawn from
train/, the rest of it is the unlabeled pool), and the practitioner's ``labeled/<class>/``,
``unlabeled/`` (any depth, no classes) with optional ``val/<class>/`` and ``test/<class>/``.
A file that cannot be decoded is skipped and listed with its reason, never a crash. The cache
(``DIR/.swwae-cache``) is keyed on the file list, sizes, mtimes and the preprocessing, rebuilt
when any of them changes, and built under a lock so two processes starting together build it once.
Batches are read from it with ``pread``, so the pool never has to fit in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

try:
    import fcntl
except ImportError:  # not POSIX: two processes may both build the cache (each renames a complete copy)
    fcntl = None

CACHE_VERSION = 1
CACHE_FOLDER = ".swwae-cache"
SIZE_PRESETS = (28, 32, 96)  # the preset networks' input sides
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
STATS_SAMPLE = 10_000  # training images the mean and std are computed from (seeded)
PARALLEL_ABOVE = 2_000  # files: below this, decoding in one process is faster than starting workers


class FolderError(ValueError):
    """A folder that cannot make a dataset: one line naming the folder and the numbers."""


class EmptyFile(ValueError):
    """A zero-byte file."""


@dataclass
class Entry:
    path: str  # relative to the root, '/'-separated
    split: str  # train / test (academic), labeled / unlabeled / val / test (practitioner)
    label: int  # class index; -1 where there is none (unlabeled)
    size: int
    mtime_ns: int


# ----------------------------------------------------------------------------- indexing
def files_under(folder: Path) -> list[tuple[tuple[str, ...], os.stat_result]]:
    """(path parts below ``folder``, stat) of every visible file at any depth, sorted; hidden names are skipped."""
    found = []

    def walk(directory: str, parts: tuple[str, ...]) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    walk(entry.path, (*parts, entry.name))
                elif entry.is_file():
                    found.append(((*parts, entry.name), entry.stat()))

    walk(str(folder), ())
    return sorted(found, key=lambda item: item[0])


def layout(root: Path) -> tuple[str, dict[str, Path]]:
    """('academic' | 'practitioner', split name -> its folder) of a data directory."""
    if not root.is_dir():
        raise FolderError(f"--data-dir {str(root)!r} is not a folder")
    splits = {name: root / name for name in ("train", "test", "labeled", "unlabeled", "val") if (root / name).is_dir()}
    if "train" in splits:
        return "academic", {k: v for k, v in splits.items() if k in ("train", "test")}
    if "labeled" in splits:
        return "practitioner", {k: v for k, v in splits.items() if k in ("labeled", "unlabeled", "val", "test")}
    raise FolderError(
        f"--data-dir {str(root)!r} has neither train/<class>/ (the academic layout) nor "
        f"labeled/<class>/ with unlabeled/ (the practitioner's)"
    )


def class_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def index(root: Path) -> tuple[str, list[str], list[Entry], list[tuple[str, str]]]:
    """(layout, class names, entries, skipped (path, reason)) of every file under the data directory."""
    kind, folders = layout(root)
    labeled_split = "train" if kind == "academic" else "labeled"
    classes = class_names(folders[labeled_split])
    if len(classes) < 2:
        raise FolderError(
            f"{folders[labeled_split]} holds {len(classes)} class folder(s) {classes}: a classifier needs 2 or more"
        )
    known = {name: i for i, name in enumerate(classes)}
    entries, skipped = [], []
    from tqdm.auto import tqdm

    for split, folder in folders.items():
        files = files_under(folder)
        for parts, stat in tqdm(
            files, desc=f"indexing {split}/", unit="file", disable=len(files) < PARALLEL_ABOVE, file=sys.stderr
        ):
            relative = "/".join((split, *parts))
            label = -1
            if split != "unlabeled":
                if len(parts) < 2:
                    skipped.append((relative, f"not inside a class folder of {split}/"))
                    continue
                if parts[0] not in known:
                    raise FolderError(
                        f"{folder / parts[0]} is a class that {folders[labeled_split]} does not have "
                        f"(its classes: {classes})"
                    )
                label = known[parts[0]]
            entries.append(Entry(relative, split, label, stat.st_size, stat.st_mtime_ns))
    if not entries:
        raise FolderError(f"--data-dir {str(root)!r} holds no files under {', '.join(f'{s}/' for s in folders)}")
    return kind, classes, entries, skipped


# ----------------------------------------------------------------------------- decoding
def _to_8_bits(image: Image.Image) -> Image.Image:
    """16- and 32-bit grayscale scaled to 0..255 (PIL's own conversion clips instead)."""
    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(array * 255.0 / top), 0, 255).astype(np.uint8), mode="L")


def decode(data: bytes, image_size: int, channels: int) -> np.ndarray:
    """(channels, size, size) uint8: EXIF orientation applied, the first frame, the shorter side resized
    to ``image_size`` and the centre cropped. Raises on anything Pillow cannot decode."""
    if not data:
        raise EmptyFile("empty file (0 bytes)")
    with Image.open(io.BytesIO(data)) as opened:
        opened.seek(0)  # a GIF's or a TIFF's first frame
        image = ImageOps.exif_transpose(opened)
        image.load()
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            image = _to_8_bits(image)
        image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    if (width, height) != (image_size, image_size):
        scale = image_size / min(width, height)
        resized = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        image = image.resize(resized, Image.BILINEAR)
        left, top = (resized[0] - image_size) // 2, (resized[1] - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def failure_reason(error: BaseException) -> str:
    """Why a file was skipped, in a few words."""
    text = " ".join(str(error).split())
    if isinstance(error, EmptyFile):
        return text
    if "cannot identify image file" in text:
        return "not an image Pillow can decode"
    if "truncated" in text.lower():
        return f"truncated ({text})"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _decode_file(job: tuple[str, int, int]) -> tuple[np.ndarray | None, str, str]:
    """(pixels or None, reason it failed, sha1 of the bytes): runs in a worker process."""
    path, image_size, channels = job
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return None, f"unreadable ({error.strerror or error})", ""
    digest = hashlib.sha1(data).hexdigest()
    try:
        return decode(data, image_size, channels), "", digest
    except Exception as error:  # Pillow raises many kinds; each is a skipped file, never a crash
        return None, failure_reason(error), digest


def _sample_headers(root: Path, entries: list[Entry], n: int) -> list[tuple[bool, int]]:
    """(grayscale?, shorter side) of a seeded sample of ``n`` images, from their headers (nothing is decoded)."""
    found = []
    for i in np.random.default_rng(0).permutation(len(entries))[:n]:
        try:
            with Image.open(root / entries[i].path) as image:
                gray = image.mode in GRAY_MODES or (image.mode == "P" and _gray_palette(image))
                found.append((gray, min(image.size)))
        except Exception:  # noqa: BLE001  (a bad file is reported when it is decoded)
            continue
    return found


def dominant_channels(root: Path, entries: list[Entry]) -> int:
    """3 when most of a seeded sample of the images are in colour, else 1."""
    headers = _sample_headers(root, entries, 500)
    return 3 if sum(not gray for gray, _ in headers) > len(headers) / 2 else 1


def _gray_palette(image: Image.Image) -> bool:
    palette = np.asarray(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(len(palette)) and bool((palette == palette[:, :1]).all())


def default_image_size(root: Path, entries: list[Entry]) -> int:
    """The preset side nearest the median shorter side of a seeded sample of the images (the smaller on a tie)."""
    sides = [side for _, side in _sample_headers(root, entries, 200)]
    median = float(np.median(sides)) if sides else SIZE_PRESETS[0]
    return min(SIZE_PRESETS, key=lambda s: (abs(s - median), s))


# ----------------------------------------------------------------------------- the cache
class DiskImages:
    """uint8 images (N, C, H, W) in a raw file, read one batch at a time with ``pread``: the pages
    go through the OS's file cache, never into this process's memory all at once."""

    def __init__(self, path: Path, item_shape: tuple[int, int, int], rows: np.ndarray):
        self.path, self.item_shape, self.rows = Path(path), tuple(item_shape), np.asarray(rows, dtype=np.int64)
        self._item_bytes = int(np.prod(self.item_shape))
        self._fd: tuple[int, int] | None = None  # (pid, descriptor): a forked worker opens its own

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.item_shape)

    def _descriptor(self) -> int:
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(self.path, os.O_RDONLY))
        return self._fd[1]

    def __getitem__(self, indices) -> torch.Tensor:
        rows = (
            self.rows[np.asarray(indices, dtype=np.int64).reshape(-1)]
            if not isinstance(indices, slice)
            else self.rows[indices]
        )
        out = np.empty((len(rows), self._item_bytes), dtype=np.uint8)
        fd, size = self._descriptor(), self._item_bytes
        for i, row in enumerate(rows.tolist()):
            chunk = os.pread(fd, size, row * size)
            if len(chunk) != size:
                raise OSError(f"{self.path} is shorter than its manifest says (row {row}): delete the cache")
            out[i] = np.frombuffer(chunk, dtype=np.uint8)
        return torch.from_numpy(out.reshape(len(rows), *self.item_shape))

    def subset(self, indices) -> "DiskImages":
        return DiskImages(self.path, self.item_shape, self.rows[np.asarray(indices, dtype=np.int64).reshape(-1)])

    def concat(self, other: "DiskImages") -> "DiskImages":
        assert other.path == self.path and other.item_shape == self.item_shape
        return DiskImages(self.path, self.item_shape, np.concatenate([self.rows, other.rows]))

    def __getstate__(self):  # pickled into DataLoader workers: the descriptor is not
        return {**self.__dict__, "_fd": None}


def cache_key(entries: list[Entry], image_size: int, channels: int) -> str:
    listing = json.dumps(
        [CACHE_VERSION, image_size, channels, [(e.path, e.split, e.label, e.size, e.mtime_ns) for e in entries]]
    )
    return hashlib.sha256(listing.encode()).hexdigest()[:20]


def _cache_dir(root: Path) -> Path:
    folder = root / CACHE_FOLDER
    try:
        folder.mkdir(exist_ok=True)
        return folder
    except OSError:  # a read-only data folder: the user's cache instead
        fallback = Path.home() / ".cache" / "swwae-lightning" / hashlib.sha256(str(root).encode()).hexdigest()[:16]
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _decode_all(root: Path, entries: list[Entry], image_size: int, channels: int):
    from tqdm.auto import tqdm

    jobs = [(str(root / e.path), image_size, channels) for e in entries]
    progress = dict(
        total=len(jobs),
        desc=f"decoding {len(jobs):,} images into the cache",
        unit="img",
        file=sys.stderr,
        disable=len(jobs) < PARALLEL_ABOVE,
    )
    if len(jobs) < PARALLEL_ABOVE or (os.cpu_count() or 1) < 2:
        yield from tqdm(map(_decode_file, jobs), **progress)
        return
    with get_context("fork" if sys.platform != "win32" else "spawn").Pool(min(4, os.cpu_count() or 1)) as pool:
        yield from tqdm(pool.imap(_decode_file, jobs, chunksize=256), **progress)


def build_cache(root: Path, entries: list[Entry], image_size: int, channels: int, folder: Path, key: str) -> dict:
    """Decode every entry once into ``<key>.u8`` and write ``<key>.json``, the manifest of what is in it."""
    data_path, manifest_path = folder / f"{key}.u8", folder / f"{key}.json"
    tmp = folder / f".{key}.u8.tmp-{os.getpid()}"
    kept, skipped, digests = [], [], []
    try:
        with open(tmp, "wb") as out:
            for entry, (pixels, reason, digest) in zip(entries, _decode_all(root, entries, image_size, channels)):
                if pixels is None:
                    skipped.append((entry.path, reason))
                    continue
                out.write(pixels.tobytes())
                kept.append(entry)
                digests.append(digest)
        os.replace(tmp, data_path)
    finally:
        tmp.unlink(missing_ok=True)
    manifest = {
        "version": CACHE_VERSION,
        "image_size": image_size,
        "channels": channels,
        "paths": [e.path for e in kept],
        "splits": [e.split for e in kept],
        "labels": [e.label for e in kept],
        "sha1": digests,
        "skipped": skipped,
    }
    tmp_manifest = folder / f".{key}.json.tmp-{os.getpid()}"
    tmp_manifest.write_text(json.dumps(manifest))
    os.replace(tmp_manifest, manifest_path)  # last: a manifest means a complete cache
    return manifest


def cached(root: Path, entries: list[Entry], image_size: int, channels: int) -> tuple[dict, Path]:
    """The cache's manifest and data file, built first if missing; one process builds, the others wait."""
    folder = _cache_dir(root)
    key = cache_key(entries, image_size, channels)
    manifest_path = folder / f"{key}.json"
    lock = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the manifest
        if manifest_path.is_file():
            return json.loads(manifest_path.read_text()), folder / f"{key}.u8"
        return build_cache(root, entries, image_size, channels, folder, key), folder / f"{key}.u8"
    finally:
        os.close(lock)


def channel_stats(images: DiskImages, rows: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale of a seeded sample of ``rows``."""
    sample = np.random.default_rng(0).permutation(rows)[:STATS_SAMPLE]
    total = np.zeros(images.item_shape[0])
    squares = np.zeros(images.item_shape[0])
    count = 0
    for start in range(0, len(sample), 64):  # small batches: large images must not make a memory peak here
        batch = images.subset(sample[start : start + 64])[:].numpy().astype(np.float32)
        total += batch.sum(axis=(0, 2, 3), dtype=np.float64)
        squares += (batch * batch).sum(axis=(0, 2, 3), dtype=np.float64)
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    mean = total / max(count, 1) / 255.0
    std = np.sqrt(np.maximum(squares / max(count, 1) / 255.0**2 - mean**2, 1e-12))
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


__all__ = [
    "FolderError",
    "Entry",
    "layout",
    "files_under",
    "index",
    "decode",
    "DiskImages",
    "cached",
    "channel_stats",
    "dominant_channels",
    "default_image_size",
    "SIZE_PRESETS",
    "CACHE_FOLDER",
]
