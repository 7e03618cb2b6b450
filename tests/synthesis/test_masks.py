"""Mask sources: deformation, the plausibility filter, the shape model and `draw_masks`."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from data.types import CaseRef, PreparedCase
from synthesis import masks as M
from synthesis.masks import (DeformConfig, MaskConfig, deform_pair, deform_stack, draw_masks, parse_source_mix,
                             plausibility_problems, problem_reasons)

H = W = 64


def disk(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def heart_slice(lv_r: float = 8.0, wall: float = 4.0, rv_r: float = 10.0, cy: float = 32, cx: float = 34,
                rv: bool = True) -> np.ndarray:
    """Short-axis slice: LV disk, MYO ring around it, RV crescent against the septum."""
    sl = np.zeros((H, W), np.uint8)
    epi = disk(cy, cx, lv_r + wall)
    if rv:
        sl[disk(cy, cx - lv_r - wall, rv_r) & ~epi] = M.RV
    sl[epi] = M.MYO
    sl[disk(cy, cx, lv_r)] = M.LV
    return sl


def heart_stack(scale: float = 1.0) -> np.ndarray:
    """Base to apex: empty slice, hearts shrinking towards the apex, an apical MYO cap, empty slice."""
    slices = [np.zeros((H, W), np.uint8)]
    slices += [heart_slice(lv_r=r * scale, rv_r=(r + 2) * scale) for r in (10, 9, 8, 6)]
    slices += [heart_slice(lv_r=3 * scale, rv=False), np.zeros((H, W), np.uint8)]
    return np.stack(slices)


def case(mask: np.ndarray, patient: str) -> PreparedCase:
    ref = CaseRef(patient_id=patient, phase="ED", image_path=None, mask_path=None)  # type: ignore[arg-type]
    return PreparedCase(ref=ref, image=(mask / 3.0).astype(np.float32), mask=mask, geometry=None)


@pytest.fixture(scope="module")
def cases() -> list[PreparedCase]:
    return [case(heart_stack(s), f"p{i:03d}") for i, s in enumerate((0.9, 1.0, 1.1, 0.95))]


# ---------------------------------------------------------------------------------------------- plausibility
def test_hand_made_heart_is_plausible():
    assert plausibility_problems(heart_stack()) == []


def test_slices_beyond_the_heart_are_fine():
    stack = heart_stack()
    stack[0][disk(32, 14, 6)] = M.RV  # RV alone above the LV base: no MYO on the slice to check against
    assert plausibility_problems(stack) == []
    assert problem_reasons(np.zeros((3, H, W), np.uint8)) == {M.NO_HEART}


def _lv_touches_background(stack):
    stack[2][28:37, 44:52] = M.LV  # cut through the lateral wall: the cavity opens onto background


def _two_rv_blobs(stack):
    stack[2][disk(32, 56, 5) & (stack[2] == M.BG)] = M.RV  # a second RV against the lateral wall


def _rv_far_from_septum(stack):
    stack[2][stack[2] == M.RV] = M.BG
    stack[2][disk(8, 8, 5)] = M.RV


def _hole_in_myocardium(stack):
    stack[2][31:33, 44:46] = M.BG  # 2 x 2 pixels of background inside the wall


@pytest.mark.parametrize("corrupt, reason", [
    (_lv_touches_background, M.LV_NOT_ENCLOSED),
    (_two_rv_blobs, M.SPLIT.format("RV", 2)),
    (_rv_far_from_septum, M.RV_FAR),
    (_hole_in_myocardium, M.HOLE.format("LV+MYO")),
])
def test_implausible_cases_are_rejected_with_the_right_reason(corrupt, reason):
    stack = heart_stack()
    corrupt(stack)
    assert reason in problem_reasons(stack)
    assert f"{reason} (slice 2)" in plausibility_problems(stack)
    assert all("(slice 2)" in p for p in plausibility_problems(stack))  # the other slices are untouched


def test_the_basal_slice_may_open_onto_the_outflow_tract():
    stack = heart_stack()
    stack[1][28:37, 44:52] = M.LV  # first LV slice: the cavity opens onto background
    assert plausibility_problems(stack) == []
    stack[2][28:37, 44:52] = M.LV  # the same opening one slice further in is not
    assert plausibility_problems(stack) == [f"{M.LV_NOT_ENCLOSED} (slice 2)"]


def test_single_pixel_defects_are_tolerated_only_when_asked():
    stack = heart_stack()
    stack[2, 5, 5] = M.RV  # a stray RV pixel, as nearest-neighbour resampling leaves in real masks
    assert plausibility_problems(stack, tolerance_px=1) == []
    assert M.SPLIT.format("RV", 2) in problem_reasons(stack, tolerance_px=0)


def test_lv_without_myocardium_is_rejected():
    stack = heart_stack()
    stack[3][stack[3] == M.MYO] = M.BG
    assert M.LV_WITHOUT_MYO in problem_reasons(stack)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="label stack"):
        plausibility_problems(np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match="labels 0..3"):
        plausibility_problems(np.full((1, H, W), 7, np.uint8))


# ----------------------------------------------------------------------------------------------- deformation
def test_deformed_stacks_differ_and_stay_plausible():
    stack = heart_stack()
    for seed in range(5):
        out = deform_stack(stack, np.random.default_rng(seed), DeformConfig())
        assert out.shape == stack.shape and out.dtype == np.uint8
        assert (out != stack).mean() > 0.01
        assert plausibility_problems(out) == []
        # nothing appears or vanishes: each structure keeps roughly its area and its slices
        for label in (M.RV, M.MYO, M.LV):
            ratio = (out == label).sum() / (stack == label).sum()
            assert 0.6 < ratio < 1.6
            assert ((out == label).any(axis=(1, 2)) == (stack == label).any(axis=(1, 2))).all()


def test_one_deformation_for_the_whole_stack():
    stack = np.repeat(heart_slice()[None], 5, axis=0)
    rigid_across = deform_stack(stack, np.random.default_rng(1), DeformConfig(slice_variation=0.0))
    assert (rigid_across != stack).any()
    assert all((s == rigid_across[0]).all() for s in rigid_across)  # the same warp on every slice
    varying = deform_stack(stack, np.random.default_rng(1), DeformConfig(slice_variation=0.5, slice_sigma=1.0))
    assert any((s != varying[0]).any() for s in varying)
    # slowly varying: neighbouring slices agree much more than the ends of the stack do
    assert (varying[0] != varying[1]).sum() < (varying[0] != varying[-1]).sum()


def test_deformation_is_reproducible_by_seed():
    stack = heart_stack()
    a = deform_stack(stack, np.random.default_rng(7))
    assert (a == deform_stack(stack, np.random.default_rng(7))).all()
    assert (a != deform_stack(stack, np.random.default_rng(8))).any()


def test_an_image_is_warped_with_its_mask():
    """The real slice behind a deformed mask gets the very same warp, so the two stay a pair."""
    stack = heart_stack()
    mask, image = deform_pair(stack, stack.astype(np.float32), np.random.default_rng(3), DeformConfig())
    assert (mask == deform_stack(stack, np.random.default_rng(3), DeformConfig())).all()  # the image changes nothing
    heart = ndimage.binary_erosion(mask > 0, iterations=2)  # inside (not on the edge) the labels carry over
    assert (np.rint(image[heart]) == mask[heart]).mean() > 0.97
    assert (image[ndimage.binary_erosion(mask == 0, iterations=2)] < 0.5).all()


# --------------------------------------------------------------------------------------------------- draws
def test_draw_masks_is_deterministic_and_honours_the_mix(cases):
    mix = {"real": 0.4, "deformed": 0.6}
    draws, report = draw_masks(mix, cases, 5, seed=3)
    again, _ = draw_masks(mix, cases, 5, seed=3)
    other, _ = draw_masks(mix, cases, 5, seed=4)
    assert [(d.source, d.source_case, d.seed) for d in draws] == [(d.source, d.source_case, d.seed) for d in again]
    assert all((a.mask == b.mask).all() for a, b in zip(draws, again))
    assert [d.seed for d in draws] != [d.seed for d in other]
    assert sorted(d.source for d in draws) == ["deformed"] * 3 + ["real"] * 2  # 40/60 of 5, exactly
    assert report.stats("real").tried == report.stats("real").accepted == 2
    assert report.stats("deformed").accepted == 3


def test_draws_are_traceable_to_their_source(cases):
    by_id = {c.case_id: c for c in cases}
    draws, _ = draw_masks({"real": 1, "deformed": 1}, cases, 6, seed=0)
    for d in draws:
        source = by_id[d.source_case].mask
        if d.source == "real":
            assert (d.mask == source).all()
        else:  # the seed reproduces the accepted deformation
            assert (d.mask == deform_stack(source, np.random.default_rng(d.seed), DeformConfig())).all()
            assert plausibility_problems(d.mask) == []
    real = [d.source_case for d in draws if d.source == "real"]
    assert len(set(real)) == len(real)  # real draws walk distinct cases first


def test_draws_carry_the_real_slices_they_come_from(cases):
    by_id = {c.case_id: c for c in cases}
    draws, _ = draw_masks({"real": 1, "deformed": 1, "sampled": 1}, cases, 6, seed=0)
    for d in draws:
        if d.source == "real":
            np.testing.assert_array_equal(d.image, by_id[d.source_case].image)
        elif d.source == "deformed":
            source = by_id[d.source_case]
            _, expected = deform_pair(source.mask, source.image, np.random.default_rng(d.seed), DeformConfig())
            np.testing.assert_array_equal(d.image, expected)
        else:  # a shape drawn from the model has no real slice behind it
            assert d.image is None


def test_rejections_are_counted_by_reason(cases, monkeypatch):
    broken = heart_stack()
    _rv_far_from_septum(broken)
    calls = {"n": 0}
    real_deform = M.deform_pair

    def flaky(mask, image, rng, cfg=None):  # the first two tries of every draw give an implausible stack
        calls["n"] += 1
        return (broken, image) if calls["n"] % 3 else real_deform(mask, image, rng, cfg)

    monkeypatch.setattr(M, "deform_pair", flaky)
    draws, report = draw_masks({"deformed": 1.0}, cases, 2, seed=0)
    stats = report.stats("deformed")
    assert (stats.tried, stats.accepted) == (6, 2)
    assert stats.rejected == {M.RV_FAR: 4}
    assert report.rejection_rate("deformed") == pytest.approx(4 / 6)
    assert report.as_dict()["sources"]["deformed"]["rejected"] == {M.RV_FAR: 4}
    assert "RV far from septum" in report.format()


def test_implausible_templates_are_excluded_and_hopeless_draws_fail(cases):
    broken = heart_stack()
    _two_rv_blobs(broken)
    draws, report = draw_masks({"deformed": 1.0}, [*cases, case(broken, "bad")], 4, seed=0)
    assert report.excluded_cases == ["bad_ED"]
    assert "bad_ED" not in {d.source_case for d in draws}
    with pytest.raises(ValueError, match="none of the 1 masks is plausible"):
        draw_masks({"deformed": 1.0}, [case(broken, "bad")], 1, seed=0)
    wild = MaskConfig(max_tries=2, deform=DeformConfig(elastic_px=40, elastic_sigma_px=2, slice_variation=1.0))
    with pytest.raises(RuntimeError, match="no plausible stack in 2 tries"):
        draw_masks({"deformed": 1.0}, cases, 1, seed=0, cfg=wild)


@pytest.mark.parametrize("mix, match", [
    ({"real": 1, "morphed": 1}, "unknown source 'morphed'"),
    ({"real": -1.0}, r"source_mix\['real'\]"),
    ({"real": 0.0}, "sum to 0"),
    ({}, "expected weights"),
])
def test_bad_source_mix_names_the_key(cases, mix, match):
    with pytest.raises(ValueError, match=match):
        draw_masks(mix, cases, 2, seed=0)


def test_parse_source_mix():
    assert parse_source_mix("real=0.5, deformed=1.5") == {"real": 0.5, "deformed": 1.5}
    with pytest.raises(ValueError, match="name=weight"):
        parse_source_mix("real:0.5")


def test_sampled_source_gives_new_plausible_stacks(cases):
    more = [case(heart_stack(s), f"q{i}") for i, s in enumerate(np.linspace(0.8, 1.2, 8))]
    draws, report = draw_masks({"sampled": 1.0}, more, 3, seed=0, cfg=MaskConfig(max_tries=50))
    for d in draws:
        assert d.source == "sampled" and d.source_case == "shape_model"
        assert d.mask.shape == more[0].mask.shape
        assert plausibility_problems(d.mask) == []
        assert all((d.mask != c.mask).any() for c in more)
    assert report.stats("sampled").accepted == 3


# ------------------------------------------------------------------------------------------------ real data
def test_real_acdc_masks_mostly_pass(acdc_root):
    import nibabel as nib

    paths = sorted(acdc_root.glob("patient00[1-8]/*_gt.nii.gz"))
    stacks = [np.asarray(nib.load(p).dataobj).astype(np.uint8).transpose(2, 0, 1) for p in paths]
    passed = [not plausibility_problems(s) for s in stacks]
    assert sum(passed) >= 0.8 * len(passed)
    stack = next(s for s, ok in zip(stacks, passed) if ok)
    deformed = [deform_stack(stack, np.random.default_rng(s)) for s in range(3)]
    assert sum(not problem_reasons(d) for d in deformed) >= 2


def test_shape_model_input_checks():
    from synthesis.shape_model import ShapeModel

    with pytest.raises(ValueError, match="at least 2 stacks"):
        ShapeModel.fit([heart_stack()])
    with pytest.raises(ValueError, match="one in-plane size"):
        ShapeModel.fit([heart_stack(), heart_stack()[:, :32, :32]])
