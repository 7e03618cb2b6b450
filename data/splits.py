"""Patient-level train/val/test splits and nested training fractions.

Ids are patient ids, so the phases (ED, ES) of a patient always land in the same split. All randomness comes
from the seed, and results do not depend on the order the ids are given in.

Repeated draws (`repeated_draws`): further training subsets of each fraction's size, so a low-data result can be
replicated over which patients were trained on. Draw 0 is the nested subset; later draws are the next windows of
the same stratified order (disjoint) where the training patients allow, else independent seeded draws.

Stratification (e.g. by ACDC group) uses a systematic interleaving: patients are shuffled within their
group, then ordered by (rank within group + random offset) / group size. Every prefix and every
contiguous window of that order holds each group in proportion (+-1), so taking test, then val, then
train as consecutive windows spreads the groups over all three; the same holds for nested fractions.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from data.config import SplitConfig
from data.io import write_text
from data.types import DataError

SPLIT_FILENAME = "splits.json"


@dataclass
class Split:
    train: list[str]
    val: list[str]
    test: list[str]
    seed: int
    fractions: dict[str, list[str]] = field(default_factory=dict)  # "0.1" -> training patients (nested)
    # "0.1" -> {"mode": "disjoint" | "independent" | "all" | "cross-validation", "patients": [draw 0, draw 1, ...]}
    # (draw 0 = fractions); under cross-validation also "folds": the test fold of each draw
    draws: dict[str, dict[str, Any]] = field(default_factory=dict)
    # outer cross-validation (`outer_folds`): the test patients of each fold; test = fold 0, train = the rest
    test_folds: list[list[str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        try:
            return cls(train=sorted(d["train"]), val=sorted(d["val"]), test=sorted(d["test"]), seed=int(d["seed"]),
                       fractions={str(k): sorted(v) for k, v in d.get("fractions", {}).items()},
                       draws={str(k): {"mode": str(v["mode"]), "patients": [sorted(p) for p in v["patients"]],
                                       **({"folds": [int(f) for f in v["folds"]]} if "folds" in v else {})}
                              for k, v in d.get("draws", {}).items()},
                       test_folds=[sorted(f) for f in d.get("test_folds", [])])
        except KeyError as exc:
            raise ValueError(f"split: missing key {exc.args[0]!r}") from exc


def fraction_key(fraction: float) -> str:
    """The key of a fraction in `Split.fractions`: 0.1 -> "0.1", 1 -> "1.0"."""
    return str(float(fraction))


def stratified_order(ids: Iterable[str], rng: np.random.Generator,
                     strata: dict[str, str] | None = None) -> list[str]:
    """A random order of `ids` in which every contiguous window mixes the strata in proportion."""
    ids = sorted(set(ids))
    if not strata or any(i not in strata for i in ids):
        return [ids[k] for k in rng.permutation(len(ids))]
    groups: dict[str, list[str]] = defaultdict(list)
    for i in ids:
        groups[str(strata[i])].append(i)
    keyed = []
    for name in sorted(groups):
        members = [groups[name][k] for k in rng.permutation(len(groups[name]))]
        offset = rng.random()
        keyed += [((rank + offset) / len(members), rng.random(), pid) for rank, pid in enumerate(members)]
    return [pid for *_, pid in sorted(keyed)]


def make_split(patient_ids: Iterable[str], cfg: SplitConfig, *, test_patient_ids: Iterable[str] | None = None,
               strata: dict[str, str] | None = None, fractions: Sequence[float] = (),
               linked: Iterable[Iterable[str]] = (), draws: int = 1, outer_folds: int = 1) -> Split:
    """Split patients into train/val/test with `cfg.seed`.

    `test_patient_ids` (a separate test root): test = those and `cfg.n_test` is ignored. `strata`: patient id
    -> group used to stratify; ignored unless every patient has one. `fractions`: also draw nested training
    subsets (see `nested_fractions`). `linked`: groups of patients that must land on the same side (e.g. ACDC
    patient074 and patient076 hold identical images, see `duplicate_patients`); each group follows its member
    drawn first, so a side may hold one or two patients more than asked for. `draws` > 1: also draw that many
    training subsets per fraction (`repeated_draws`). `outer_folds` > 1 (no separate test root): outer
    cross-validation (`cross_validation_folds`); the validation patients stay those of the plain split.
    """
    pool = sorted(set(patient_ids))
    rng = np.random.default_rng([int(cfg.seed), 0])
    if test_patient_ids is not None:
        test = sorted(set(test_patient_ids))
        shared = sorted(set(test) & set(pool))
        if shared:
            raise ValueError(f"split: test patients also in the training root: {shared[:5]}"
                             f"{' ...' if len(shared) > 5 else ''}")
        n_test = 0
    else:
        test, n_test = [], int(cfg.n_test)
    n_val = int(cfg.n_val)
    check_split_sizes(len(pool), cfg, separate_test=test_patient_ids is not None)
    order = stratified_order(pool, rng, strata)
    if n_test:
        test = sorted(order[:n_test])
    val = sorted(order[n_test:n_test + n_val])
    train = sorted(order[n_test + n_val:])
    groups = [set(g) & set(pool) for g in linked]
    groups = [g for g in groups if len(g) > 1]
    if groups:
        sides = [set(test), set(val), set(train)]
        rank = {pid: i for i, pid in enumerate(order)}
        for group in groups:
            first = min(group, key=lambda pid: rank.get(pid, -1))  # a separate root's test patients come first
            target = next(side for side in sides if first in side)
            for side in sides:
                side -= group
            target |= group
        test, val, train = (sorted(side) for side in sides)
        if not val or not train:
            raise ValueError(f"split: keeping linked patients {[sorted(g) for g in groups]} together left no "
                             f"{'validation' if not val else 'training'} patient; raise n_val")
    split = Split(train=train, val=val, test=test, seed=int(cfg.seed))
    if outer_folds > 1:
        if test_patient_ids is not None:
            raise ValueError("split: outer cross-validation folds the patients of data.root, but a separate test "
                             "root was given")
        folds = cross_validation_folds([pid for pid in order if pid not in set(val)], outer_folds, groups)
        split = Split(train=sorted((set(test) | set(train)) - set(folds[0])), val=val, test=folds[0],
                      seed=int(cfg.seed), test_folds=folds)
        if fractions:
            split.fractions = nested_fractions(split.train, list(fractions), cfg.seed, strata=strata, linked=groups)
            split.draws = fold_draws(folds, list(fractions), cfg.seed, max(draws, outer_folds), strata=strata,
                                     linked=groups)
        return split
    if fractions:
        split.fractions = nested_fractions(train, list(fractions), cfg.seed, strata=strata, linked=groups)
    if fractions and draws > 1:
        split.draws = repeated_draws(train, list(fractions), cfg.seed, draws, strata=strata, linked=groups)
    return split


def check_split_sizes(n_patients: int, cfg: SplitConfig, *, separate_test: bool, where: str = "") -> None:
    """ValueError naming the keys unless `n_patients` hold the test (unless `separate_test`) and validation
    patients and one training patient: cheap, so the pipeline checks it as soon as the patients are counted."""
    n_test = 0 if separate_test else int(cfg.n_test)
    if n_test < 0 or cfg.n_val < 0:
        raise ValueError(f"data.split.n_test = {cfg.n_test} and data.split.n_val = {cfg.n_val} must not be "
                         f"negative")
    needed = n_test + int(cfg.n_val) + 1
    if n_patients < needed:
        asked = "" if separate_test else f"data.split.n_test = {cfg.n_test} test + "
        lower = "data.split.n_val" if separate_test else "data.split.n_test or data.split.n_val"
        raise ValueError(f"{asked}data.split.n_val = {cfg.n_val} validation + 1 training patient need {needed} "
                         f"patients, but only {n_patients} were found{' in ' + where if where else ''}; lower "
                         f"{lower}")


def duplicate_patients(image_hashes: dict[str, Iterable[str]]) -> list[set[str]]:
    """Groups of patients that share an identical image file (by content hash): these must never be split
    across train and test. (In ACDC, patient074 and patient076 hold the same images with different masks.)"""
    owners: dict[str, set[str]] = defaultdict(set)
    for pid, hashes in image_hashes.items():
        for h in hashes:
            owners[h].add(pid)
    groups: list[set[str]] = []
    for shared in (o for o in owners.values() if len(o) > 1):
        overlapping = [g for g in groups if g & shared]
        merged = set(shared).union(*overlapping)
        groups = [g for g in groups if not g & shared] + [merged]
    return sorted(groups, key=lambda g: sorted(g))


def nested_fractions(train_ids: Iterable[str], fractions: list[float], seed: int, *,
                     strata: dict[str, str] | None = None,
                     linked: Iterable[set[str]] = ()) -> dict[str, list[str]]:
    """Training subsets by fraction, nested by construction (10 % inside 25 % inside ...).

    One fixed (stratified when `strata` covers every id) order of the training patients; fraction f takes
    its first max(1, round(f * n)) patients, plus the `linked` partners of those (still nested).
    """
    ids, order, closure = _draw_order(train_ids, fractions, seed, strata, linked)
    return {fraction_key(f): closure(order[:_draw_size(f, ids)]) for f in sorted(fractions, key=float)}


def repeated_draws(train_ids: Iterable[str], fractions: list[float], seed: int, n_draws: int, *,
                   strata: dict[str, str] | None = None,
                   linked: Iterable[set[str]] = ()) -> dict[str, dict[str, Any]]:
    """`n_draws` training subsets per fraction, each of the fraction's size (+ `linked` partners).

    Draw 0 is `nested_fractions`' subset. When n_draws x size fit in the training patients, draw k takes the
    next window of the same stratified order with earlier draws' patients left out ("disjoint"); otherwise each
    later draw is its own seeded stratified order's prefix ("independent"). A draw equal to an earlier one is
    dropped (a fraction whose subset is every training patient has one draw, mode "all")."""
    ids, order, closure = _draw_order(train_ids, fractions, seed, strata, linked)
    out = {}
    for f in sorted(fractions, key=float):
        size = _draw_size(f, ids)
        draws = [closure(order[:size])]
        mode = "all" if len(draws[0]) == len(ids) else "disjoint" if n_draws * size <= len(ids) else "independent"
        if mode == "disjoint":
            for _ in range(1, n_draws):
                used = {pid for draw in draws for pid in draw}
                draws.append(closure([pid for pid in order if pid not in used][:size]))
            if any(len(d) < size for d in draws):  # linked partners used up the pool: fall back
                draws, mode = draws[:1], "independent"
        if mode == "independent":
            for k in range(1, n_draws):
                other = stratified_order(ids, np.random.default_rng([int(seed), 1, k]), strata)
                draw = closure(other[:size])
                if draw not in draws:
                    draws.append(draw)
        out[fraction_key(f)] = {"mode": mode, "patients": draws}
    return out


def cross_validation_folds(order: list[str], n_folds: int, linked: Iterable[set[str]] = ()) -> list[list[str]]:
    """`order` (a stratified order of the patients outside validation) cut into `n_folds` contiguous windows of
    near-equal size, so each fold holds every stratum in proportion; a `linked` group joins the fold of its
    member that comes first in `order`."""
    if n_folds > len(order):
        raise ValueError(f"split: {n_folds} outer folds need at least {n_folds} patients outside validation, "
                         f"found {len(order)}")
    bounds = np.linspace(0, len(order), n_folds + 1).round().astype(int)
    folds = [set(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    rank = {pid: i for i, pid in enumerate(order)}
    for group in (set(g) & set(order) for g in linked):
        if len(group) > 1:
            target = next(f for f in folds if min(group, key=rank.__getitem__) in f)
            for fold in folds:
                fold -= group
            target |= group
    if not all(folds):
        raise ValueError(f"split: keeping linked patients together left an outer fold empty; use fewer folds")
    return [sorted(f) for f in folds]


def fold_draws(folds: list[list[str]], fractions: list[float], seed: int, n_draws: int, *,
               strata: dict[str, str] | None = None, linked: Iterable[set[str]] = ()) -> dict[str, dict[str, Any]]:
    """Per fraction, `n_draws` draws under outer cross-validation: draw k is tested on fold k mod len(folds) and
    trains on the fraction's share of the other folds' patients. Draw 0 is `nested_fractions`' subset of the
    patients outside fold 0; later draws are prefixes of their own seeded stratified order (independent; a draw
    equal to an earlier one on the same fold, e.g. every patient at fraction 1, is dropped)."""
    everyone = sorted({pid for fold in folds for pid in fold})
    out = {}
    for f in sorted(fractions, key=float):
        patients, fold_of = [], []
        for k in range(n_draws):
            fold = k % len(folds)
            pool = sorted(set(everyone) - set(folds[fold]))
            _, order, closure = _draw_order(pool, [f], seed, strata, linked)
            if k:
                order = stratified_order(pool, np.random.default_rng([int(seed), 2, k]), strata)
            draw = closure(order[:_draw_size(f, pool)])
            if not any(d == draw and g == fold for d, g in zip(patients, fold_of)):
                patients.append(draw)
                fold_of.append(fold)
        out[fraction_key(f)] = {"mode": "cross-validation", "patients": patients, "folds": fold_of}
    return out


def _draw_size(fraction: float, ids: list[str]) -> int:
    return max(1, int(round(float(fraction) * len(ids))))


def _draw_order(train_ids: Iterable[str], fractions: list[float], seed: int, strata: dict[str, str] | None,
                linked: Iterable[set[str]]):
    """The sorted ids, the stratified order of draw 0 and the closure adding a drawn patient's linked partners."""
    ids = sorted(set(train_ids))
    if not ids:
        raise ValueError("nested_fractions: no training patients")
    for f in fractions:
        if not 0.0 < float(f) <= 1.0:
            raise ValueError(f"nested_fractions: fraction {f} must be in (0, 1]")
    order = stratified_order(ids, np.random.default_rng([int(seed), 1]), strata)
    linked = [set(g) for g in linked]

    def closure(chosen: list[str]) -> list[str]:
        out = set(chosen)
        for group in linked:
            if out & group:
                out |= group & set(ids)
        return sorted(out)

    return ids, order, closure


def _split_path(path: Path | str) -> Path:
    path = Path(path)
    return path if path.suffix == ".json" else path / SPLIT_FILENAME


def write_split(path: Path | str, split: Split) -> Path:
    """Write atomically as JSON; a folder path gets `splits.json` inside it."""
    return write_text(_split_path(path), json.dumps(split.to_dict(), indent=2) + "\n")


def read_split(path: Path | str) -> Split:
    path = _split_path(path)
    if not path.is_file():
        raise DataError(path, "split file not found")
    try:
        return Split.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise DataError(path, f"not a valid split file ({exc})") from exc
