"""On-disk store of preprocessed cases, read back memory-mapped, so training never re-reads NIfTI and never holds
a whole cohort in RAM.

One folder per case, `<case_id>.<key[:16]>/`, holding `image.npy` (float32, (S, H, W)), `mask.npy` (uint8, when
the case has one) and `meta.json` (format, key, geometry). Cases are opened with `np.load(..., mmap_mode="r")`:
`PreparedCase.image` / `.mask` are read-only `np.memmap`s, and a slice is read from disk (or the page cache)
only when training or evaluation indexes it. Why plain `.npy` + mmap rather than zarr or blosc2: no new
dependency; reads are zero-copy (indexing a slice touches only its pages); the page cache is shared between
processes, so DataLoader workers, sweep processes and torchrun ranks reading the same store hold one copy; and
compression would buy little on float32 MR intensities (noisy mantissas) while adding a dependency and a
decompression cost per read. Each mapped array keeps one file descriptor open: `prepare_cases` raises the soft
open-file limit up to the hard one where a cohort needs it, and reads any case beyond it into memory with a
warning rather than failing.

The key (`cache_key`) is the sha1 of the preprocessing config, the label map, `PREPROCESS_VERSION` and the sha1
of the bytes of the image and mask files. Hashing content rather than paths or mtimes means a changed config or
a changed file rebuilds exactly the affected cases, while a copied or re-downloaded dataset hits. The role is
not part of the key: it only affects validation messages. Entries for other keys may coexist in the same folder
(e.g. two crop sizes).

An entry is written into a hidden temp folder beside it and renamed into place once complete: a killed run
leaves at most hidden temp folders, which are never read, and resumes with every case already renamed; an
unreadable entry, or a deleted store, is rebuilt. Delete an entry folder (or the store) rather than edit a file
in it: truncating a file that a running process has mapped makes its next read of that part fault (SIGBUS);
renames and deletions are safe, as POSIX keeps a mapped file alive until it is unmapped.

Entries of the previous format (one `<case_id>.<key[:16]>.npz` per case) are converted once, without
preprocessing again (the arrays are copied bit for bit), and the `.npz` is removed: a run prepared before keeps
its cache.

`prepare_cases(..., workers=N)` hashes, preprocesses and writes cases in N processes (`data.preprocess_workers`):
each case is a pure function of its files and the config, so the store, and the cases returned, are the same as
with one process.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.config import PreprocessConfig
from data.io import umask, writing
from data.parallel import process_map
from data.preprocess import PREPROCESS_VERSION, Geometry, preprocess_case
from data.types import CaseRef, DataError, DataWarning, PreparedCase

_CHUNK = 1 << 20
STORE_FORMAT = 1  # bump when the layout of an entry folder changes
META = "meta.json"
# File descriptors left for everything else (logs, checkpoints, loader pipes) when arrays are memory-mapped.
_FD_RESERVE = 256


def file_sha1(path: Path | str) -> str:
    """sha1 of a file's bytes (ACDC: ~120 MB in well under a second)."""
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror or exc})") from exc
    return digest.hexdigest()


def voxel_sha1(path: Path | str) -> str:
    """sha1 of a volume's voxel values and shape: equal for the same image saved twice (file bytes differ
    with the gzip header), which is how duplicate patients are found."""
    from data.io import read_volume

    array = np.ascontiguousarray(read_volume(path).array)
    return hashlib.sha1(str((array.shape, array.dtype.str)).encode() + array.tobytes()).hexdigest()


def config_key(cfg: PreprocessConfig, label_map: dict[int, int] | None = None) -> str:
    """sha1 of what, besides the input files, determines the preprocessed arrays."""
    payload = {
        "version": PREPROCESS_VERSION,
        "preprocess": asdict(cfg),
        "label_map": sorted((int(k), int(v)) for k, v in label_map.items()) if label_map else None,
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_key(ref: CaseRef, cfg: PreprocessConfig, label_map: dict[int, int] | None = None) -> str:
    """Key of one case's cache entry: config key + content hashes of its image and mask files."""
    return _case_key(config_key(cfg, label_map), ref)


def _case_key(config: str, ref: CaseRef) -> str:
    # A missing mask hashes as None; whether that is an error is `load_case`'s call (require_mask).
    mask = ref.mask_path if ref.mask_path is not None and Path(ref.mask_path).is_file() else None
    files = [file_sha1(ref.image_path), file_sha1(mask) if mask is not None else None]
    return hashlib.sha1(json.dumps({"config": config, "files": files}).encode()).hexdigest()


def entry_path(cache_dir: Path | str, ref: CaseRef, key: str) -> Path:
    """The entry folder of a case under a key."""
    return Path(cache_dir) / f"{ref.case_id}.{key[:16]}"


def legacy_entry_path(cache_dir: Path | str, ref: CaseRef, key: str) -> Path:
    """Where the previous format (one `.npz` per case) kept the same entry."""
    return Path(cache_dir) / f"{ref.case_id}.{key[:16]}.npz"


# --------------------------------------------------------------------------------------------- entries


def save_entry(folder: Path, case: PreparedCase, key: str) -> None:
    """Write a case's entry atomically: into a hidden temp folder beside `folder`, renamed onto it when complete.

    The arrays are saved as they are (same dtype, same values). A stale entry already at `folder` (unreadable,
    or another writer's) is moved aside first; a failed write is a WriteError naming `folder`.
    """
    folder = Path(folder)
    with writing(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            os.chmod(tmp, 0o777 & ~umask())
            np.save(tmp / "image.npy", case.image, allow_pickle=False)
            if case.mask is not None:
                np.save(tmp / "mask.npy", case.mask, allow_pickle=False)
            meta = {"format": STORE_FORMAT, "key": key, "case_id": case.case_id, "has_mask": case.mask is not None,
                    "geometry": case.geometry.to_dict()}
            (tmp / META).write_text(json.dumps(meta))
            _rename_into_place(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _rename_into_place(tmp: Path, folder: Path) -> None:
    try:
        os.rename(tmp, folder)
        return
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    # An entry is there already: a stale one (it did not load) or a concurrent writer's. Replace it; arrays
    # another process has mapped stay valid after the rename and removal (POSIX keeps unlinked files alive).
    stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale.", dir=folder.parent))
    try:
        os.rename(folder, stale / "entry")
    except FileNotFoundError:
        pass
    try:
        os.rename(tmp, folder)
    except OSError as exc:  # a concurrent writer got there in between: its entry is as good as ours
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    shutil.rmtree(stale, ignore_errors=True)


def load_entry(folder: Path, ref: CaseRef, key: str, *, mmap: bool = True) -> PreparedCase | None:
    """The stored case (arrays memory-mapped read-only, or read into memory with `mmap=False`), or None when
    absent, unreadable, truncated or written under another key."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text())
        if meta.get("format") != STORE_FORMAT or meta.get("key") != key:
            return None
        geometry = Geometry.from_dict(meta["geometry"])
        mode = "r" if mmap else None
        image = np.load(folder / "image.npy", mmap_mode=mode, allow_pickle=False)
        mask = np.load(folder / "mask.npy", mmap_mode=mode, allow_pickle=False) if meta["has_mask"] else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError):
        return None  # json.JSONDecodeError is a ValueError; a short .npy fails the mmap with ValueError
    if image.dtype != np.float32 or image.shape != geometry.prepared_shape:
        return None
    if mask is not None and (mask.dtype != np.uint8 or mask.shape != image.shape):
        return None
    return PreparedCase(ref=ref, image=image, mask=mask, geometry=geometry)


def load_legacy_entry(path: Path, ref: CaseRef, key: str) -> PreparedCase | None:
    """A case from the previous format's `.npz` (read into memory), or None when absent, unreadable or keyed
    otherwise."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            mask = data["mask"] if "mask" in data.files else None
            return PreparedCase(ref=ref, image=data["image"], mask=mask,
                                geometry=Geometry.from_dict(json.loads(str(data["geometry"]))))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


# ----------------------------------------------------------------------------------------- preparation


def prepare_cases(refs: list[CaseRef], cfg: PreprocessConfig, cache_dir: Path | str,
                  label_map: dict[int, int] | None = None, *, role: str = "train",
                  require_mask: bool = True, workers: int = 1) -> list[PreparedCase]:
    """Preprocessed cases in the order of `refs`, memory-mapped from the store in `cache_dir`, built (and stored)
    on a miss, in `workers` processes.

    The role only changes validation, so it is not in the key; an entry without a mask is not reused when
    a mask is required, nor one with an empty mask for training (rebuilding lets `load_case` reject it).
    With several workers, the warnings of the workers are repeated here in the order of `refs`, and the error
    raised is that of the first failing case in that order, as with one process.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    job = functools.partial(_store_case, cfg=cfg, config=config_key(cfg, label_map), cache_dir=cache_dir,
                            label_map=label_map, role=role, require_mask=require_mask)
    workers = max(1, min(int(workers), len(refs)))
    keys: list[str] = []
    counts = {"built": 0, "converted": 0}
    bar = tqdm(total=len(refs), desc=f"prepare {role}", unit="case", dynamic_ncols=True)

    def done(key: str, outcome: str) -> None:
        keys.append(key)
        if outcome in counts:
            counts[outcome] += 1
            bar.set_postfix({k: v for k, v in counts.items() if v}, refresh=False)
        bar.update()

    try:
        process_map(job, refs, workers, done=lambda result: done(*result))
    finally:
        bar.close()
    mappable, in_memory = _mappable_arrays(2 * len(refs)), 0
    cases = []
    for ref, key in zip(refs, keys):
        folder = entry_path(cache_dir, ref, key)
        case = load_entry(folder, ref, key, mmap=mappable >= 2)
        if case is None:  # written a moment ago: only something outside this run can have removed it
            raise DataError(folder, f"store entry of case {ref.case_id} vanished or became unreadable right after "
                                    f"it was written")
        if mappable >= 2:
            mappable -= 1 + (case.mask is not None)
        else:
            in_memory += 1
        cases.append(case)
    if in_memory:
        warnings.warn(f"{cache_dir}: the open-file limit (ulimit -n) leaves too few file descriptors to memory-map "
                      f"every case; {in_memory} of {len(refs)} are held in memory instead. Raise the limit to keep "
                      f"them on disk", DataWarning, stacklevel=2)
    return cases


def _store_case(ref: CaseRef, *, cfg: PreprocessConfig, config: str, cache_dir: Path,
                label_map: dict[int, int] | None, role: str, require_mask: bool) -> tuple[str, str]:
    """Make sure the store holds a usable entry for `ref`: (key, "hit" | "converted" | "built").

    Runs in the worker processes: it returns the key only, never arrays (the caller maps the entry itself)."""
    key = _case_key(config, ref)
    folder = entry_path(cache_dir, ref, key)
    if _usable(load_entry(folder, ref, key), role, require_mask):
        return key, "hit"
    legacy = legacy_entry_path(cache_dir, ref, key)
    old = load_legacy_entry(legacy, ref, key)
    if _usable(old, role, require_mask):
        save_entry(folder, old, key)
        legacy.unlink(missing_ok=True)
        return key, "converted"
    case = preprocess_case(ref, cfg, label_map, role=role, require_mask=require_mask)
    save_entry(folder, case, key)
    legacy.unlink(missing_ok=True)  # an unusable old entry (e.g. truncated) is superseded
    return key, "built"


def _usable(case: PreparedCase | None, role: str, require_mask: bool) -> bool:
    if case is None or (require_mask and case.mask is None):
        return False
    return not (role == "train" and case.mask is not None and not case.mask.any())


def _mappable_arrays(wanted: int) -> int:
    """How many more arrays may be memory-mapped: each map holds a file descriptor. Raises the soft open-file
    limit towards the hard one when `wanted` does not fit (1024 by default on many systems, where 2000 patients
    x ED/ES x image/mask need 8000)."""
    try:
        import resource
    except ImportError:  # no rlimits (Windows): let the system decide
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fd_dir = Path("/proc/self/fd") if Path("/proc/self/fd").is_dir() else Path("/dev/fd")
    try:
        in_use = len(os.listdir(fd_dir))
    except OSError:
        in_use = 64
    needed = in_use + wanted + _FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else max(0, soft - in_use - _FD_RESERVE)
