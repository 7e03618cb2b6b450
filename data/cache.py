"""On-disk cache of preprocessed cases, so training never re-reads NIfTI.

One uncompressed `.npz` per case (`image`, `mask` when present, `geometry` and `key` as JSON strings) named
`<case_id>.<key[:16]>.npz`. The key (`cache_key`) is the sha1 of the preprocessing config, the label map,
`PREPROCESS_VERSION` and the sha1 of the bytes of the image and mask files. Hashing content rather than
paths or mtimes means a changed config or a changed file rebuilds exactly the affected cases, while a copied
or re-downloaded dataset hits. The role is not part of the key: it only affects validation messages.
Entries for other keys may coexist in the same folder (e.g. two crop sizes).

Writes go through `data.io.atomic_path` (hidden temp file + rename): a killed run leaves at most a hidden
temp file, which is never read; an unreadable entry is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.config import PreprocessConfig
from data.io import atomic_path
from data.preprocess import PREPROCESS_VERSION, Geometry, preprocess_case
from data.types import CaseRef, DataError, PreparedCase

_CHUNK = 1 << 20


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
    return Path(cache_dir) / f"{ref.case_id}.{key[:16]}.npz"


def save_entry(path: Path, case: PreparedCase, key: str) -> None:
    arrays = {"image": case.image, "geometry": np.array(json.dumps(case.geometry.to_dict())), "key": np.array(key)}
    if case.mask is not None:
        arrays["mask"] = case.mask
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_entry(path: Path, ref: CaseRef, key: str) -> PreparedCase | None:
    """The cached case, or None when absent, unreadable or written under another key."""
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


def prepare_cases(refs: list[CaseRef], cfg: PreprocessConfig, cache_dir: Path | str,
                  label_map: dict[int, int] | None = None, *, role: str = "train",
                  require_mask: bool = True) -> list[PreparedCase]:
    """Preprocessed cases in the order of `refs`, read from `cache_dir` or built (and stored) on a miss.

    The role only changes validation, so it is not in the key; an entry without a mask is not reused when
    a mask is required, nor one with an empty mask for training (rebuilding lets `load_case` reject it).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    config = config_key(cfg, label_map)
    cases, built = [], 0
    bar = tqdm(refs, desc=f"prepare {role}", unit="case", dynamic_ncols=True)
    for ref in bar:
        key = _case_key(config, ref)
        path = entry_path(cache_dir, ref, key)
        case = load_entry(path, ref, key)
        if case is None or (require_mask and case.mask is None) or (role == "train" and _empty(case)):
            case = preprocess_case(ref, cfg, label_map, role=role, require_mask=require_mask)
            save_entry(path, case, key)
            built += 1
            bar.set_postfix(built=built, refresh=False)
        cases.append(case)
    return cases


def _empty(case: PreparedCase) -> bool:
    return case.mask is not None and not case.mask.any()
