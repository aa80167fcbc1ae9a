"""Low-level readers of the on-disk formats resprout's data sources understand.

Every reader turns a problem with a file into a one-line :class:`~resprout.errors.DataError` that names the file,
never a traceback, and never skips a file silently:

* :func:`read_idx` -- MNIST-style IDX files (optionally gzip-compressed), parsed with numpy from bytes;
* :func:`load_cifar_pickle` -- the python-pickle CIFAR batches, through an unpickler that only builds numpy arrays
  and plain containers (a pickle that references anything else is refused before anything is called);
* :func:`read_image` / :func:`scan_class_tree` -- image files read with Pillow and class-per-folder trees.
"""

from __future__ import annotations

import codecs
import os
import pickle
import stat
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from resprout.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "is_image_file",
    "load_cifar_pickle",
    "read_idx",
    "read_image",
    "scan_class_tree",
]


def one_line(text: object) -> str:
    """``text`` as a single line (error reasons from libraries sometimes span several)."""
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------------------------

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """The content of ``path``, gunzipped if it is gzip data; and whether the content is complete.

    A gzip stream that stops early is not an error here: the bytes recovered so far are returned with
    ``complete=False`` so the caller can say how much of what the header promises is missing.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path} cannot be read: {one_line(e.strerror or e)}") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw, True
    chunks: list[bytes] = []
    rest = raw
    try:
        while rest:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunks.append(d.decompress(rest))
            if not d.eof:
                chunks.append(d.flush())
                return b"".join(chunks), False
            rest = d.unused_data
            # Concatenated gzip members are one stream; anything else after the end (e.g. zero padding) is not.
            if rest and not rest.startswith(_GZIP_MAGIC):
                if rest.strip(b"\x00"):
                    raise DataError(f"{path} is not a valid gzip file: {len(rest)} stray bytes after the end")
                break
    except zlib.error as e:
        raise DataError(f"{path} is not a valid gzip file: {one_line(e)}") from None
    return b"".join(chunks), True


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with ``ndim`` dimensions (3 for images, 1 for labels), raw or gzipped.

    The result is a writable, C-contiguous uint8 array. The magic number (``0x00000800 + ndim``), the dimensions
    and the byte count promised by the header are checked.
    """
    path = Path(path)
    data, complete = _read_bytes(path)
    header_len = 4 + 4 * ndim
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if len(data) < 4:
        raise DataError(f"{path} is truncated: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        what = "an IDX image file" if ndim == 3 else ("an IDX label file" if ndim == 1 else f"a {ndim}-d IDX file")
        raise DataError(f"{path} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x} ({what})")
    if len(data) < header_len:
        raise DataError(f"{path} is truncated: {len(data)} bytes, too short for its {header_len}-byte IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if ndim >= 2 and any(d == 0 for d in dims[1:]):
        raise DataError(f"{path} has an empty item shape {'x'.join(map(str, dims[1:]))} in its header")
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(data) - header_len
    if found < expected or not complete:
        if ndim == 3:
            promised = f"{dims[0]} images of {dims[1]}x{dims[2]}"
        elif ndim == 1:
            promised = f"{dims[0]} labels"
        else:
            promised = f"shape {'x'.join(map(str, dims))}"
        if found < expected:
            raise DataError(f"{path} is truncated: header says {promised} ({expected} bytes), found {found}")
        raise DataError(f"{path} is truncated: the gzip stream ends before its end marker")
    if found > expected:
        raise DataError(f"{path} has {found - expected} bytes more than its header promises ({expected} bytes)")
    arr = np.frombuffer(data, dtype=np.uint8, count=expected, offset=header_len).reshape(dims)
    return np.array(arr, copy=True, order="C")


# ---------------------------------------------------------------------------------------------------------------
# CIFAR pickles
# ---------------------------------------------------------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The few callables a pickled numpy array (or numpy scalar) needs, under every module name numpy used."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_SAFE_BUILTINS = {
    # Plain containers and scalars. Protocol 0-2 pickles of bytes go through _codecs.encode.
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "bytes"): bytes,
    ("builtins", "str"): str,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "complex"): complex,
    ("builtins", "bool"): bool,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "bytearray"): bytearray,
    ("_codecs", "encode"): codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can only build numpy arrays, numpy scalars and plain containers."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="bytes")
        self._path = path
        if _CifarUnpickler._allowed is None:
            _CifarUnpickler._allowed = {**_SAFE_BUILTINS, **_numpy_globals()}

    def find_class(self, module: str, name: str) -> Any:
        obj = (self._allowed or {}).get((module, name))
        if obj is None:
            raise _Refused(f"{module}.{name}")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"persistent id {one_line(repr(pid))[:60]}")


class _Refused(Exception):
    """Raised inside the unpickler for a reference it will not resolve."""


def load_cifar_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Unpickle one CIFAR batch (or meta) file into a dict with ``str`` keys.

    The file is read with ``encoding="bytes"`` (as the original Python 2 pickles need); bytes keys are decoded so
    ``b"data"`` and ``"data"`` both become ``"data"``. Only numpy arrays, numpy scalars and plain containers can be
    built: a reference to anything else (``os.system``, say) is refused before it is called.
    """
    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as e:
        raise DataError(f"{path} cannot be read: {one_line(e.strerror or e)}") from None
    with fh:
        try:
            obj = _CifarUnpickler(fh, path).load()
        except _Refused as e:
            raise DataError(f"{path} is not a CIFAR pickle: it references {e}") from None
        except DataError:
            raise
        except MemoryError:
            raise DataError(f"{path} is truncated or corrupt: it asks for more memory than there is") from None
        except Exception as e:  # truncated or corrupt: EOFError, UnpicklingError, ValueError, struct.error, ...
            reason = one_line(e) or type(e).__name__
            raise DataError(f"{path} is truncated or corrupt (not a readable pickle): {reason}") from None
        trailing = fh.read(1)
    if trailing:
        raise DataError(f"{path} is corrupt: it has data after the end of the pickle")
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR pickle: it holds a {type(obj).__name__}, expected a dict")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        out[str(key)] = value
    return out


# ---------------------------------------------------------------------------------------------------------------
# Image files and class-per-folder trees
# ---------------------------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_file(name: str) -> bool:
    """Whether ``name`` has an image extension (case-insensitive) and is not hidden."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def read_image(path: Path, mode: str, size: int | None = None, *, short_side: int | None = None) -> np.ndarray:
    """One image as a uint8 array of shape (H, W) for ``mode="L"`` or (H, W, 3) for ``mode="RGB"``.

    With ``size``, the image is resized to ``size`` x ``size`` (bilinear, antialiased) unless it already is. With
    ``short_side``, its short side is resized to ``short_side`` and the long side keeps the aspect ratio
    (:func:`resprout.data.augment.short_side_size`); a JPEG over four times larger than that is decoded at 1/2,
    1/4 or 1/8 scale first, to no less than twice the target (libjpeg's DCT scaling, Pillow's ``draft``): 2-3x
    faster than a full decode, within about one gray level of it on average.
    """
    from PIL import Image

    check_regular_file(path)
    try:
        with Image.open(path) as im:
            target = None
            if short_side is not None:
                from resprout.data.augment import short_side_size

                w, h = im.size
                th, tw = short_side_size(h, w, short_side)
                target = (tw, th)
                if im.format == "JPEG":  # never below twice the target: the resize below still smooths
                    im.draft(None, (2 * tw, 2 * th))
            im.load()
            if im.mode in ("P", "PA") and "transparency" in im.info:
                im = im.convert("RGBA")
            if im.mode != mode:
                im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            if target is not None and im.size != target:
                im = im.resize(target, Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # OSError, UnidentifiedImageError, DecompressionBombError, SyntaxError, ValueError...
        reason = one_line(e) or type(e).__name__
        raise DataError(f"{path} cannot be read: {reason}") from None
    if arr.ndim != (2 if mode == "L" else 3):
        raise DataError(f"{path} cannot be read: unexpected decoded shape {arr.shape}")
    return arr


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def check_regular_file(path: Path) -> None:
    """Refuse (one line naming it) anything but a regular file (after symlinks), without opening it: a FIFO would
    block the reader forever, a device could be endless."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(f"{path} cannot be read: {one_line(e.strerror or e)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path} is {_kind(st.st_mode)}, not a regular file; remove it from the image folder")


def listed_file(folder: Path, rel: str, where: str) -> Path:
    """``folder / rel`` for a path a list file names (``where``: the list and line, prefixed to errors): relative,
    inside ``folder``, existing, a regular file."""
    p = Path(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise DataError(f"{where}: {rel!r} is not a path inside {folder}")
    file = folder / p
    if not file.exists():
        raise DataError(f"{where}: {file} does not exist")
    try:
        check_regular_file(file)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    return file


def _unreadable(e: OSError) -> None:
    raise DataError(f"{e.filename} cannot be read: {one_line(e.strerror or e)}") from None


def _walk_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, hidden entries ignored), in sorted order. A folder that
    cannot be listed, or a special file (FIFO, socket, device), is an error naming it."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()  # (device, inode) of visited folders: symlink loops end here
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=_unreadable):
        try:
            st = os.stat(dirpath)
        except OSError as e:
            _unreadable(e)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                if is_image_file(name):  # a dangling symlink named like an image
                    raise DataError(f"{path} cannot be read: it is a broken link") from None
                continue
            except OSError as e:
                raise DataError(f"{path} cannot be read: {one_line(e.strerror or e)}") from None
            if not stat.S_ISREG(mode):
                raise DataError(f"{path} is {_kind(mode)}, not a regular file; remove it from the image folder")
            if is_image_file(name):
                found.append(path)
    return found


def scan_class_tree(root: Path) -> dict[str, list[Path]]:
    """The image files of a ``root/<class>/...`` tree, by class name (sorted), each list sorted.

    Errors (one line, naming the folder or file): ``root`` missing or not a folder, no class folders, a class folder
    with no images, an image file directly in ``root`` (it would belong to no class).
    """
    if not root.exists():
        raise DataError(f"{root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    classes: dict[str, list[Path]] = {}
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{root} cannot be read: {one_line(e.strerror or e)}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
            mode = entry.stat().st_mode
        except FileNotFoundError:  # a broken link: as before, only an error if it is named like an image
            is_dir, mode = False, stat.S_IFREG
        except OSError as e:
            raise DataError(f"{Path(entry.path)} cannot be read: {one_line(e.strerror or e)}") from None
        if not is_dir and not stat.S_ISREG(mode):
            raise DataError(f"{Path(entry.path)} is {_kind(mode)}, not a regular file or a class folder; remove it "
                            f"from the image folder")
        if is_dir:
            files = _walk_images(Path(entry.path))
            if not files:
                raise DataError(f"{Path(entry.path)} has no images")
            classes[entry.name] = files
        elif is_image_file(entry.name):
            raise DataError(f"{Path(entry.path)} is not inside a class folder (expected {root}/<class>/<image>)")
    if not classes:
        raise DataError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    return classes
