"""The embedded phantom: ACDC layout, plausible anatomy and physiology, determinism, scanner styles."""
from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from data.phantom import GROUPS, STYLES, generate_patient, write_phantom

ACDC_KEYS = {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}


def _info(pdir) -> dict[str, str]:
    lines = (pdir / "Info.cfg").read_text().strip().splitlines()
    return dict(line.split(": ", 1) for line in lines)


def _load(path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


@pytest.fixture(scope="module")
def patients():
    """One patient per group, style drawn from the seed (module-scoped: rendered once)."""
    return [generate_patient(np.random.default_rng(100 + i), group=g) for i, g in enumerate(GROUPS)]


def test_layout_and_info_cfg_match_acdc(phantom_root):
    folders = sorted(p for p in phantom_root.iterdir() if p.is_dir())
    assert [p.name for p in folders] == [f"patient{i:03d}" for i in range(1, 7)]
    for pdir in folders:
        info = _info(pdir)
        assert ACDC_KEYS <= set(info) and info["Group"] in GROUPS
        ed, es, n_frames = int(info["ED"]), int(info["ES"]), int(info["NbFrame"])
        assert ed == 1 and 1 < es <= n_frames
        assert 140 <= float(info["Height"]) <= 200 and 40 <= float(info["Weight"]) <= 160
        assert re.fullmatch(r"Height: \d+\.\d", next(l for l in (pdir / "Info.cfg").read_text().splitlines()
                                                   if l.startswith("Height")))
        names = {p.name for p in pdir.iterdir()}
        for frame in (ed, es):
            assert {f"{pdir.name}_frame{frame:02d}.nii.gz", f"{pdir.name}_frame{frame:02d}_gt.nii.gz"} <= names
        assert len(names) == 5  # Info.cfg + 2 images + 2 masks, nothing half-written
    groups = [_info(p)["Group"] for p in folders]
    assert set(groups) == set(GROUPS)  # balanced like ACDC even for a tiny phantom


def test_volumes_have_acdc_geometry_and_intensities(phantom_root):
    for pdir in sorted(p for p in phantom_root.iterdir() if p.is_dir()):
        info = _info(pdir)
        image, affine = _load(pdir / f"{pdir.name}_frame01.nii.gz")
        mask, mask_affine = _load(pdir / f"{pdir.name}_frame01_gt.nii.gz")
        es_image, _ = _load(pdir / f"{pdir.name}_frame{int(info['ES']):02d}.nii.gz")
        assert image.shape == mask.shape == es_image.shape and image.ndim == 3
        assert 8 <= image.shape[2] <= 14 and min(image.shape[:2]) >= 128
        np.testing.assert_allclose(affine, mask_affine)
        sx, sy, sz = np.diag(affine)[:3]
        assert np.allclose(affine, np.diag([sx, sy, sz, 1.0]))
        assert sx == sy and 1.2 <= sx <= 1.9 and 7.5 <= sz <= 10.5
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2, 3}
        assert np.isfinite(image).all() and image.min() >= 0
        assert np.array_equal(image, np.round(image))  # integer-valued like scanner output
        assert 100 <= np.percentile(image, 99) <= 10000


@pytest.mark.parametrize("phase", ["ED", "ES"])
def test_anatomy_is_plausible(patients, phase):
    for p in patients:
        mask = p.masks[phase]
        n = mask.shape[2]
        # RV vanishes towards the apex before the LV does.
        assert not (mask[:, :, -1] == 1).any()
        for z in (n // 2 - 1, n // 2):  # mid-ventricular slices
            sl = mask[:, :, z]
            assert {1, 2, 3} <= set(np.unique(sl)), (p.group, phase, z)
            # LV cavity enclosed by myocardium: no hole in LV|MYO, and LV never touches background/RV.
            heart = (sl == 2) | (sl == 3)
            assert np.array_equal(ndimage.binary_fill_holes(heart), heart)
            ring = ndimage.binary_dilation(sl == 3) & (sl != 3)
            assert ring.any() and (sl[ring] == 2).all(), (p.group, phase, z)
            # One connected LV, MYO and RV each.
            for label in (1, 2, 3):
                assert ndimage.label(sl == label)[1] == 1, (p.group, phase, z, label)


def test_physiology_matches_groups(patients):
    for p in patients:
        voxel_ml = float(np.prod(np.diag(p.affine)[:3])) / 1000
        lv = {ph: (p.masks[ph] == 3).sum() * voxel_ml for ph in ("ED", "ES")}
        rv = {ph: (p.masks[ph] == 1).sum() * voxel_ml for ph in ("ED", "ES")}
        myo = {ph: (p.masks[ph] == 2).sum() * voxel_ml for ph in ("ED", "ES")}
        ef, rvef = 1 - lv["ES"] / lv["ED"], 1 - rv["ES"] / rv["ED"]
        assert 0.05 < ef < 0.85 and 0.1 < rvef < 0.75, (p.group, ef, rvef)
        assert 50 < lv["ED"] < 450 and 50 < rv["ED"] < 400, (p.group, lv, rv)
        assert abs(myo["ES"] / myo["ED"] - 1) < 0.2  # myocardium is incompressible
        if p.group == "DCM":
            assert ef < 0.4 and lv["ED"] > 180
        if p.group == "HCM":
            assert ef > 0.5 and myo["ED"] > 150
        if p.group == "NOR":
            assert ef > 0.5
        if p.group == "RV":
            assert rv["ED"] > lv["ED"] and rvef < 0.45


def test_myocardium_thickens_at_es(patients):
    """Wall volume is kept while the cavity empties, so the wall makes up more of the LV at ES."""
    for p in patients:
        share = {ph: (p.masks[ph] == 2).sum() / np.isin(p.masks[ph], (2, 3)).sum() for ph in ("ED", "ES")}
        assert share["ES"] > share["ED"] + 0.03, (p.group, share)


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = write_phantom(tmp_path / "a", n_patients=1, seed=7)
    b = write_phantom(tmp_path / "b", n_patients=1, seed=7)
    c = write_phantom(tmp_path / "c", n_patients=1, seed=8)
    for name in ("patient001_frame01.nii.gz", "patient001_frame01_gt.nii.gz"):
        arr_a, arr_b, arr_c = (_load(d[0] / name)[0] for d in (a, b, c))
        assert np.array_equal(arr_a, arr_b)
        assert arr_a.shape != arr_c.shape or not np.array_equal(arr_a, arr_c)
    assert (a[0] / "Info.cfg").read_text() == (b[0] / "Info.cfg").read_text()


def test_patient_depends_only_on_seed_and_index(tmp_path, phantom_root):
    """A small phantom is a prefix of a larger one with the same seed (cheap to grow, stable splits)."""
    folders = write_phantom(tmp_path, n_patients=1, seed=0)
    name = "patient001_frame01.nii.gz"
    assert np.array_equal(_load(folders[0] / name)[0], _load(phantom_root / "patient001" / name)[0])


def test_forced_style_keeps_the_anatomy_and_changes_the_scanner():
    seed = 3
    views = {name: generate_patient(np.random.default_rng(seed), name, group="NOR") for name in STYLES}
    infos = {name: p.info for name, p in views.items()}
    assert len({tuple(sorted(i.items())) for i in infos.values()}) == 1  # same patient
    assert {p.style for p in views.values()} == set(STYLES)
    spacings = {name: tuple(np.diag(p.affine)[:3]) for name, p in views.items()}
    assert len(set(spacings.values())) == len(STYLES)


def _noise_and_contrast(p) -> tuple[float, float]:
    """Noise and myocardium/blood contrast, both relative to blood, of a mid ED slice.

    ED and ES share everything but the heart and the noise draw, so far from the heart their
    difference is pure noise (sqrt(2) sigma where the tissue signal is well above it).
    """
    z = p.images["ED"].shape[2] // 2
    ed, es = p.images["ED"][:, :, z], p.images["ES"][:, :, z]
    sl = p.masks["ED"][:, :, z]
    blood = np.median(ed[ndimage.binary_erosion(sl == 3, iterations=2)])
    myo = np.median(ed[ndimage.binary_erosion(sl == 2)])
    heart = (sl > 0) | (p.masks["ES"][:, :, z] > 0)
    far = (ndimage.distance_transform_edt(~heart) > 40) & (np.minimum(ed, es) > 0.2 * blood)
    noise = np.std(ed[far] - es[far]) / np.sqrt(2)
    return noise / blood, myo / blood


def test_styles_differ_measurably():
    stats = {}
    for name in STYLES:
        runs = [_noise_and_contrast(generate_patient(np.random.default_rng(s), name, group="NOR")) for s in range(2)]
        stats[name] = np.mean(np.array(runs), axis=0)
    noise = {k: v[0] for k, v in stats.items()}
    contrast = {k: v[1] for k, v in stats.items()}
    assert noise["lowfield_noisy"] > 1.5 * max(noise["siemens_like"], noise["philips_like"]), noise
    for name, style in STYLES.items():  # the measured noise is the style's (bias makes it vary a little)
        assert 0.5 * style.noise[0] < noise[name] < 2.0 * style.noise[1], (name, noise[name])
    assert contrast["lowfield_noisy"] > contrast["siemens_like"], contrast  # flatter myocardium/blood
    for value in contrast.values():
        assert 0.15 < value < 0.7  # bSSFP: bright blood, darker myocardium


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="style"):
        write_phantom("/nonexistent", n_patients=1, seed=0, style="ge_like_typo")
    with pytest.raises(ValueError, match="n_patients"):
        write_phantom("/nonexistent", n_patients=0, seed=0)
    with pytest.raises(ValueError, match="group"):
        generate_patient(np.random.default_rng(0), group="XYZ")


def test_workers_write_the_same_files_as_one_process(tmp_path, phantom_root):
    """Patients written by 2 processes are the files one process wrote (the session phantom), byte for byte."""
    folders = write_phantom(tmp_path, n_patients=3, seed=0, workers=2)
    assert [f.name for f in folders] == ["patient001", "patient002", "patient003"]
    for folder in folders:
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(p.name for p in (phantom_root / folder.name).iterdir())
        for name in names:
            assert (folder / name).read_bytes() == (phantom_root / folder.name / name).read_bytes(), name
