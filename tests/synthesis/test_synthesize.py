"""Writing synthetic datasets: layout, manifest, one style per volume, resuming, reading back."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from data.types import CaseRef
from synthesis.masks import MaskDraw
from synthesis.synthesize import MANIFEST, read_manifest, synthesize_dataset
from tests.synthesis.test_masks import heart_stack

INPLANE, SLICE = 1.5, 8.0


class RecordingGenerator:
    """Test double of `synthesis.base.Generator.sample`: label-dependent intensities, one random gain per call
    (the 'style') plus seeded noise; records every call."""

    name = "double"

    def __init__(self):
        self.calls: list[tuple[np.ndarray, int]] = []

    def sample(self, masks: np.ndarray, *, seed: int, context=None) -> np.ndarray:
        self.calls.append((masks.copy(), seed))
        rng = np.random.default_rng(seed)
        levels = np.array([0.1, 0.45, 0.3, 0.8]) * rng.uniform(0.7, 1.2)
        return np.clip(levels[masks] + rng.normal(0.0, 0.02, masks.shape), 0, 1).astype(np.float32)


def make_draws(n: int = 3) -> list[MaskDraw]:
    draws = []
    for i in range(n):
        mask = heart_stack(0.9 + 0.1 * i)[: 7 - i]  # different slice counts per volume
        draws.append(MaskDraw(mask=mask, source="deformed" if i % 2 else "real", source_case=f"p{i:03d}_ED",
                              seed=100 + i))
    return draws


def synthesize(generator, draws, out, seed=0):
    return synthesize_dataset(generator, draws, out, slice_spacing_mm=SLICE, inplane_spacing_mm=INPLANE,
                              seed=seed, generator_name=generator.name)


def test_writes_the_acdc_layout_with_one_style_per_volume(tmp_path):
    gen, draws = RecordingGenerator(), make_draws()
    manifest = synthesize(gen, draws, tmp_path)

    cases = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert cases == list(manifest["case"]) == ["synth_double_0001", "synth_double_0002", "synth_double_0003"]
    assert list(manifest["mask_source"]) == [d.source for d in draws]
    assert list(manifest["source_case"]) == [d.source_case for d in draws]
    assert list(manifest["mask_seed"]) == [d.seed for d in draws]
    assert list(manifest["n_slices"]) == [len(d.mask) for d in draws]
    for row in manifest.itertuples():
        assert (tmp_path / row.path).is_file() and (tmp_path / row.mask_path).is_file()
        assert row.path == f"{row.case}/{row.case}_frame01.nii.gz"
        info = (tmp_path / row.case / "Info.cfg").read_text().splitlines()
        assert info[:2] == ["ED: 1", "ES: 1"]
        assert info[-1] == (f"Source: synthetic (generator=double, mask_source={row.mask_source}, "
                            f"source_case={row.source_case}, seed={row.seed}, mask_seed={row.mask_seed})")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / MANIFEST, keep_default_na=False), manifest)
    pd.testing.assert_frame_equal(read_manifest(tmp_path), manifest)

    # one generator call per volume, with the whole stack, and a different style seed per volume
    assert len(gen.calls) == len(draws)
    assert all((masks == d.mask).all() for (masks, _), d in zip(gen.calls, draws))
    assert [seed for _, seed in gen.calls] == list(manifest["seed"])
    assert len(set(manifest["seed"])) == len(draws)


def test_reads_back_as_h_w_s_with_the_spacing_affine(tmp_path):
    gen, draws = RecordingGenerator(), make_draws(2)
    manifest = synthesize(gen, draws, tmp_path)
    for row, draw, (_, seed) in zip(manifest.itertuples(), draws, gen.calls):
        image, label = nib.load(tmp_path / row.path), nib.load(tmp_path / row.mask_path)
        s, h, w = draw.mask.shape
        assert image.shape == label.shape == (h, w, s)
        np.testing.assert_allclose(image.affine, np.diag([INPLANE, INPLANE, SLICE, 1.0]))
        np.testing.assert_allclose(label.affine, image.affine)
        assert label.get_data_dtype() == np.uint8
        assert (np.asarray(label.dataobj) == draw.mask.transpose(1, 2, 0)).all()
        expected = RecordingGenerator().sample(draw.mask, seed=seed) * 1000.0  # MR-like range
        np.testing.assert_allclose(image.get_fdata(), expected.transpose(1, 2, 0), rtol=1e-5)


def test_preprocessing_a_written_volume_gives_the_mask_back(tmp_path):
    from data.config import PreprocessConfig
    from data.io import read_volume
    from data.preprocess import preprocess_volume

    draw = make_draws(1)[0]
    row = next(synthesize(RecordingGenerator(), [draw], tmp_path).itertuples())
    ref = CaseRef(row.case, "ED", tmp_path / row.path, tmp_path / row.mask_path)
    cfg = PreprocessConfig(target_spacing=INPLANE, crop_size=draw.mask.shape[1])
    case = preprocess_volume(read_volume(ref.image_path), read_volume(ref.mask_path), cfg, ref)
    assert (case.mask == draw.mask).all()
    assert case.image.shape == draw.mask.shape


def test_the_acdc_loader_finds_the_volumes(tmp_path):
    from data.layouts import list_cases

    manifest = synthesize(RecordingGenerator(), make_draws(2), tmp_path)
    refs = list_cases(tmp_path, layout="acdc")
    assert sorted({r.patient_id for r in refs}) == list(manifest["case"])
    assert [r.phase for r in refs] == ["ED"] * len(manifest)  # one phase per synthetic volume, read once
    assert all(r.metadata["source"].startswith("synthetic (generator=double") for r in refs)


def test_rerun_skips_finished_volumes(tmp_path):
    draws = make_draws()
    first = synthesize(RecordingGenerator(), draws, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz")}

    again = RecordingGenerator()
    pd.testing.assert_frame_equal(synthesize(again, draws, tmp_path), first)
    assert again.calls == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz")} == stamps

    (tmp_path / "synth_double_0002" / "Info.cfg").unlink()  # as if killed while writing volume 2
    resumed = RecordingGenerator()
    synthesize(resumed, draws, tmp_path)
    assert len(resumed.calls) == 1 and (resumed.calls[0][0] == draws[1].mask).all()


def test_rerun_with_other_settings_into_the_same_folder_fails(tmp_path):
    synthesize(RecordingGenerator(), make_draws(1), tmp_path, seed=0)
    with pytest.raises(ValueError, match="different synthetic volume"):
        synthesize(RecordingGenerator(), make_draws(1), tmp_path, seed=1)


def test_spacing_comes_from_the_draw_and_is_checked(tmp_path):
    draw = make_draws(1)[0]
    draw.slice_spacing_mm, draw.inplane_spacing_mm = 10.0, 1.25
    row = next(synthesize(RecordingGenerator(), [draw], tmp_path / "a").itertuples())
    assert (row.slice_spacing_mm, row.inplane_spacing_mm) == (10.0, 1.25)
    np.testing.assert_allclose(nib.load(tmp_path / "a" / row.path).header.get_zooms(), (1.25, 1.25, 10.0))

    bare = make_draws(1)
    with pytest.raises(ValueError, match="carries no spacing"):
        synthesize_dataset(RecordingGenerator(), bare, tmp_path / "b", seed=0)
    with pytest.raises(ValueError, match="inplane_spacing_mm <= slice_spacing_mm"):
        synthesize_dataset(RecordingGenerator(), bare, tmp_path / "c", slice_spacing_mm=1.0, inplane_spacing_mm=1.5)


@pytest.mark.parametrize("bad, match", [
    (lambda masks: np.zeros(masks.shape[1:], np.float32), "returned shape"),
    (lambda masks: np.full(masks.shape, np.nan, np.float32), "non-finite"),
])
def test_bad_generator_output_is_a_clear_error(tmp_path, bad, match):
    class Broken(RecordingGenerator):
        def sample(self, masks, *, seed, context=None):
            return bad(masks)

    with pytest.raises(ValueError, match=match):
        synthesize(Broken(), make_draws(1), tmp_path)
    assert not (tmp_path / MANIFEST).exists()


@pytest.fixture(scope="module")
def gmm_file(tmp_path_factory):
    """The real `gmm` generator fitted on the test double's images, saved once for this module."""
    base = pytest.importorskip("synthesis.base")
    try:
        generator = base.build_generator("gmm")
    except (ImportError, ValueError) as exc:
        pytest.skip(f"gmm generator not available: {exc}")
    folder = tmp_path_factory.mktemp("gmm")
    masks = np.concatenate([d.mask for d in make_draws()])
    generator.fit(masks, RecordingGenerator().sample(masks, seed=0), folder / "fit", seed=0)
    return generator.save(folder / "gmm.pt")


def test_with_the_real_gmm_generator(tmp_path, gmm_file):
    from synthesis.base import load_generator

    draws = make_draws(2)
    manifest = synthesize_dataset(load_generator(gmm_file), draws, tmp_path, slice_spacing_mm=SLICE,
                                  inplane_spacing_mm=INPLANE, seed=0, generator_name="gmm")
    assert list(manifest["case"]) == ["synth_gmm_0001", "synth_gmm_0002"]
    for row, draw in zip(manifest.itertuples(), draws):
        image = nib.load(tmp_path / row.path).get_fdata()
        labels = draw.mask.transpose(1, 2, 0)
        assert image.shape == labels.shape
        assert 0 <= image.min() and image.max() <= 1000 and image.std() > 0
        assert image[labels == 3].mean() > image[labels == 2].mean()  # fitted contrast: bright blood, dark wall


def test_cli_synthesize_end_to_end(tmp_path, gmm_file, phantom_root, capsys):
    from pipeline.cli import main

    out = tmp_path / "synth"
    argv = ["synthesize", "--generator", str(gmm_file), "--masks", str(phantom_root), "--out", str(out),
            "--n", "3", "--source-mix", "real=1,deformed=2", "--seed", "1", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    manifest = read_manifest(out)
    assert len(manifest) == 3 and set(manifest["mask_source"]) == {"real", "deformed"}
    assert all(manifest["case"].str.startswith("synth_gmm_"))
    assert (manifest["inplane_spacing_mm"] == 1.5).all() and (manifest["slice_spacing_mm"] > 1.5).all()
    assert "deformed:" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="unknown source 'morphed'"):
        main([*argv[:-6], "--source-mix", "morphed=1"])
