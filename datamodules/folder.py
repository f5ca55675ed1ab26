"""Your own images: a folder tree in torchvision's ImageFolder convention, checked file by file and
decoded once into a uint8 cache on disk that every later epoch, run and rank reads.

Two layouts: the academic ``train/<class>/``, ``test/<class>/`` (``--labels N`` is drawn from
train/, the rest of it is the unlabeled pool), and the practitioner's ``labeled/<class>/``,
``unlabeled/`` (any depth, no classes) with optional ``val/<class>/`` and ``test/<class>/``.
A file that cannot be decoded is skipped and listed with its reason, never a crash. The cache
(``DIR/.swwae-cache``) is keyed on the file list, sizes, mtimes and the preprocessing, rebuilt
when any of them changes, and built under a lock so two processes starting together build it once.
Batches are read from it with ``pread``, so the pool never has to fit in memory.

A hostile or accidental tree is skipped and listed, file by file, or refused in one line (FolderError):
only regular files are ever opened (a FIFO, socket or device is listed from its ``stat``, and a file is
opened non-blocking and checked again, so one swapped in later cannot block the run either); links to
folders are followed, each folder once by (device, inode), so a symbolic-link loop or a second link to a
folder already walked is listed instead of walked again; a header claiming more than MAX_PIXELS pixels is
a decompression bomb, listed and never decoded, whatever ``Image.MAX_IMAGE_PIXELS`` a user set; a name
that is not one line of UTF-8 (bytes that do not decode, a line break, a tab) is listed, written with
backslash escapes, because the run's text files and checkpoints could not hold it (a class folder so
named is refused). A cache whose data file is not exactly its manifest's rows (cut short by a crash or
a full disk, or removed) is rebuilt at the next start; a run that finds it cut short while reading it
stops with a clear error, never garbage. A source image removed or changed after the cache was built
changes nothing for a running run (it reads only the cache); the next start indexes the files anew, so
the cache key changes and the cache is rebuilt without it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat as stat_mode
import sys
import unicodedata
import warnings
from contextlib import contextmanager
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
MAX_PIXELS = 2**27  # 134 million: a 16k x 8k panorama decodes (400 MB in RGB); a header claiming more is a bomb
MAX_FILE_BYTES = 1 << 30  # a file is read whole before it is decoded: a larger one is listed, never read
FOLDER_WALKED = "a folder already walked (a symbolic-link loop, or a second link to it)"


class FolderError(ValueError):
    """A folder that cannot make a dataset: one line naming the folder and the numbers."""


class Unusable(ValueError):
    """A file that is skipped for a reason its message already says in a few words."""


class EmptyFile(Unusable):
    """A zero-byte file."""


@dataclass
class Entry:
    path: str  # relative to the root, '/'-separated
    split: str  # train / test (academic), labeled / unlabeled / val / test (practitioner)
    label: int  # class index; -1 where there is none (unlabeled)
    size: int
    mtime_ns: int


# ----------------------------------------------------------------------------- indexing
def name_problem(name: str) -> str:
    """Why a name cannot be one line of UTF-8 in the run's text files and checkpoints; '' when it can."""
    categories = {unicodedata.category(c) for c in name} if not name.isprintable() else set()
    if "Cs" in categories:  # os.fsdecode's surrogateescape: bytes that are not UTF-8
        return "name is not valid UTF-8"
    if categories & {"Cc", "Zl", "Zp"}:
        return "name holds a line break or a control character"
    return ""


def printable(text: str) -> str:
    """``text`` as one line of UTF-8 that still names it exactly: a backslash doubled, a byte that is not UTF-8
    as \\xNN, a line break or control character as its Python escape (\\n, \\t, \\u2028)."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif "\udc80" <= c <= "\udcff":
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp"):
            out.append(ascii(c)[1:-1])
        else:
            out.append(c)
    return "".join(out)


def _kind(mode: int) -> str:
    for test, kind in (
        (stat_mode.S_ISFIFO, "a FIFO"),
        (stat_mode.S_ISSOCK, "a socket"),
        (stat_mode.S_ISCHR, "a character device"),
        (stat_mode.S_ISBLK, "a block device"),
        (stat_mode.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return kind
    return "a special file"


def _unusable(stat: os.stat_result) -> str:
    """Why a file with this stat is never opened; '' for a regular file of a readable size."""
    if not stat_mode.S_ISREG(stat.st_mode):
        return f"not a regular file ({_kind(stat.st_mode)})"
    if stat.st_size > MAX_FILE_BYTES:
        return f"too large ({stat.st_size:,} bytes, more than {MAX_FILE_BYTES:,})"
    return ""


def files_under(
    folder: Path, skipped: list[tuple[tuple[str, ...], str]] | None = None
) -> list[tuple[tuple[str, ...], os.stat_result]]:
    """(path parts below ``folder``, stat) of every visible regular file at any depth, sorted; hidden names are
    skipped. Only folders are opened here; what cannot be used is appended to ``skipped`` as (parts, reason):
    see the module's docstring. Folders are walked in name order, so which of two links is walked is stable."""
    found, refused = [], [] if skipped is None else skipped
    seen = set()

    def first_visit(path: str, stat: os.stat_result) -> bool:
        key = (stat.st_dev, stat.st_ino) if stat.st_ino else os.path.realpath(path)  # no inodes: the real path
        if key in seen:
            return False
        seen.add(key)
        return True

    first_visit(str(folder), os.stat(folder))
    pending = [(str(folder), ())]  # a stack, not recursion: any depth
    while pending:
        directory, parts = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            refused.append((parts, f"unreadable folder ({error.strerror or error})"))
            continue
        folders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            here = (*parts, entry.name)
            problem = name_problem(entry.name)
            if not problem:
                try:
                    stat = entry.stat()  # follows a link; opens nothing (a FIFO's open would block)
                except OSError as error:
                    why = error.strerror or error
                    problem = "a broken symbolic link" if entry.is_symlink() else f"unreadable ({why})"
            if not problem and stat_mode.S_ISDIR(stat.st_mode):
                if first_visit(entry.path, stat):
                    folders.append((entry.path, here))
                    continue
                problem = FOLDER_WALKED
            problem = problem or _unusable(stat)
            if problem:
                refused.append((here, problem))
            else:
                found.append((here, stat))
        pending.extend(reversed(folders))
    return sorted(found, key=lambda item: item[0])


def layout(root: Path) -> tuple[str, dict[str, Path]]:
    """('academic' | 'practitioner', split name -> its folder) of a data directory."""
    if name_problem(str(root)):
        raise FolderError(f"--data-dir '{printable(str(root))}': its {name_problem(str(root))}; rename it")
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
    """The class folders' names: one that cannot be written (see ``name_problem``) is refused, not skipped."""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in names:
        if name_problem(name):
            raise FolderError(f"{printable(str(folder / name))}: a class folder whose {name_problem(name)}; rename it")
    return names


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
        unusable = []
        files = files_under(folder, unusable)
        skipped += [(printable("/".join((split, *parts))), reason) for parts, reason in unusable]
        for parts, stat in tqdm(
            files, desc=f"indexing {split}/", unit="file", disable=len(files) < PARALLEL_ABOVE, file=sys.stderr
        ):
            relative = "/".join((split, *parts))
            label = -1
            if split != "unlabeled":
                if len(parts) < 2:
                    skipped.append((printable(relative), f"not inside a class folder of {split}/"))
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


def _check_pixels(image: Image.Image) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise Unusable(
            f"too many pixels ({width}x{height}, more than {MAX_PIXELS:,}: a decompression bomb?), never decoded"
        )


@contextmanager
def _header(source):
    """The image at ``source`` (bytes or a file), its header read and nothing decoded yet, refused above
    MAX_PIXELS whatever ``Image.MAX_IMAGE_PIXELS`` says (a user may have raised it, or set it to None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # this module's own limit decides
        try:
            image = Image.open(source)
        except Image.DecompressionBombError as error:  # a user's limit lower than ours: theirs holds too
            raise Unusable(f"too many pixels ({error}), never decoded") from error
        with image:
            _check_pixels(image)
            yield image


def open_regular(path) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file no larger than MAX_FILE_BYTES, else Unusable. Checked
    again here, not only when indexed: a FIFO swapped in since would block a plain open forever (this one does
    not block), and a device could be endless."""
    problem = _unusable(os.stat(path))
    if problem:
        raise Unusable(problem)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        problem = _unusable(os.fstat(fd))
        if problem:
            raise Unusable(problem)
        if fcntl is not None:  # blocking reads again, as for any regular file
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path) -> bytes:
    """The bytes of a regular file (see ``open_regular``); one that grew past MAX_FILE_BYTES is not read on."""
    with open_regular(path) as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise Unusable(f"too large (more than {MAX_FILE_BYTES:,} bytes)")
    return data


def decode(data: bytes, image_size: int, channels: int) -> np.ndarray:
    """(channels, size, size) uint8: EXIF orientation applied, the first frame, the shorter side resized
    to ``image_size`` and the centre cropped. Raises on anything Pillow cannot decode, and on a header
    claiming more than MAX_PIXELS pixels before anything is decoded."""
    if not data:
        raise EmptyFile("empty file (0 bytes)")
    with _header(io.BytesIO(data)) as opened:
        opened.seek(0)  # a GIF's or a TIFF's first frame
        _check_pixels(opened)  # the frame's own size
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
    if isinstance(error, Unusable):
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
        data = read_regular(path)
    except Unusable as error:
        return None, str(error), ""
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
            with open_regular(root / entries[i].path) as handle, _header(handle) as image:
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
class _OpenFile:
    """One read-only descriptor of a cache file, shared by every view of it and inherited by forked workers
    (``pread`` has no offset to share): a run reads the file it opened even if it is removed or replaced."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def descriptor(self) -> int:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        return self.fd

    def __getstate__(self):  # pickled into a spawned worker: the descriptor is not, it opens its own
        return {"path": self.path, "fd": None}

    def __del__(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass


class DiskImages:
    """uint8 images (N, C, H, W) in a raw file, read one batch at a time with ``pread``: the pages
    go through the OS's file cache, never into this process's memory all at once."""

    def __init__(self, path: Path, item_shape: tuple[int, int, int], rows: np.ndarray, _file: _OpenFile | None = None):
        self.path, self.item_shape, self.rows = Path(path), tuple(item_shape), np.asarray(rows, dtype=np.int64)
        self._item_bytes = int(np.prod(self.item_shape))
        self._file = _file or _OpenFile(self.path)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.item_shape)

    def __getitem__(self, indices) -> torch.Tensor:
        rows = (
            self.rows[np.asarray(indices, dtype=np.int64).reshape(-1)]
            if not isinstance(indices, slice)
            else self.rows[indices]
        )
        out = np.empty((len(rows), self._item_bytes), dtype=np.uint8)
        fd, size = self._file.descriptor(), self._item_bytes
        for i, row in enumerate(rows.tolist()):
            chunk = os.pread(fd, size, row * size)
            if len(chunk) != size:  # never garbage: the next start sees the size and rebuilds the cache
                raise OSError(
                    f"{self.path} was truncated while this run read it (row {row} is past its end): "
                    f"start or resume again to rebuild the cache"
                )
            out[i] = np.frombuffer(chunk, dtype=np.uint8)
        return torch.from_numpy(out.reshape(len(rows), *self.item_shape))

    def subset(self, indices) -> "DiskImages":
        rows = self.rows[np.asarray(indices, dtype=np.int64).reshape(-1)]
        return DiskImages(self.path, self.item_shape, rows, self._file)

    def concat(self, other: "DiskImages") -> "DiskImages":
        assert other.path == self.path and other.item_shape == self.item_shape
        return DiskImages(self.path, self.item_shape, np.concatenate([self.rows, other.rows]), self._file)


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


def _on_disk(handle) -> None:
    handle.flush()
    try:
        os.fsync(handle.fileno())
    except OSError:  # a file system without fsync: the size check at the next start still catches a short file
        pass


def build_cache(root: Path, entries: list[Entry], image_size: int, channels: int, folder: Path, key: str) -> dict:
    """Decode every entry once into ``<key>.u8`` and write ``<key>.json``, the manifest of what is in it."""
    data_path, manifest_path = folder / f"{key}.u8", folder / f"{key}.json"
    tmp = folder / f".{key}.u8.tmp-{os.getpid()}"
    kept, skipped, digests = [], [], []
    try:
        with open(tmp, "wb") as out:
            for entry, (pixels, reason, digest) in zip(entries, _decode_all(root, entries, image_size, channels)):
                if pixels is None:
                    skipped.append((printable(entry.path), reason))
                    continue
                out.write(pixels.tobytes())
                kept.append(entry)
                digests.append(digest)
            _on_disk(out)  # before its name is: a crash leaves no short file under it
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
    with open(tmp_manifest, "w", encoding="utf-8") as out:
        out.write(json.dumps(manifest))
        _on_disk(out)
    os.replace(tmp_manifest, manifest_path)  # last: a manifest means a complete cache
    return manifest


def _complete(manifest_path: Path, data_path: Path, item_bytes: int) -> dict | None:
    """The manifest of a complete cache, else None: a data file of any other size than its rows times
    ``item_bytes`` (cut short by a crash or a full disk, or removed), or a manifest that does not parse."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if data_path.stat().st_size == len(manifest["paths"]) * item_bytes:
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def cached(root: Path, entries: list[Entry], image_size: int, channels: int) -> tuple[dict, Path]:
    """The cache's manifest and data file, built first if missing or incomplete; one process builds, the others
    wait."""
    folder = _cache_dir(root)
    key = cache_key(entries, image_size, channels)
    manifest_path, data_path = folder / f"{key}.json", folder / f"{key}.u8"
    lock = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the manifest
        if manifest_path.exists():
            manifest = _complete(manifest_path, data_path, channels * image_size * image_size)
            if manifest is not None:
                return manifest, data_path
            print(f"the cache {data_path} does not match its manifest (cut short?): rebuilding it", file=sys.stderr)
        return build_cache(root, entries, image_size, channels, folder, key), data_path
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
    "Unusable",
    "Entry",
    "layout",
    "files_under",
    "index",
    "decode",
    "open_regular",
    "read_regular",
    "printable",
    "DiskImages",
    "cached",
    "channel_stats",
    "dominant_channels",
    "default_image_size",
    "SIZE_PRESETS",
    "CACHE_FOLDER",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
]
