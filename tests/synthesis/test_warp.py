"""`warp`: the real slice under exactly its mask draw's deformation, nothing repainted, nothing added."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import yaml

from data.types import CaseRef, PreparedCase
from pipeline.config import load_config
from pipeline.errors import ConfigError
from synthesis.base import REGISTRY, build_generator, load_generator
from synthesis.generators.gmm import GMMConfig
from synthesis.generators.warp import WarpConfig
from synthesis.masks import MaskConfig, deform_pair, draw_masks
from synthesis.synthesize import synthesize_dataset
from synthesis.train import LearnedGenerator
from tests.synthesis.test_masks import heart_stack

MIX = {"real": 1.0, "deformed": 2.0}


def textured_case(scale: float, patient: str, seed: int) -> PreparedCase:
    """A heart stack whose slice has texture everywhere, so any repainting or added noise would show."""
    mask = heart_stack(scale)
    texture = np.random.default_rng(seed).uniform(0.0, 0.3, mask.shape)
    image = (mask / 5.0 + texture).astype(np.float32)
    ref = CaseRef(patient_id=patient, phase="ED", image_path=None, mask_path=None)  # type: ignore[arg-type]
    return PreparedCase(ref=ref, image=image, mask=mask, geometry=None)


@pytest.fixture(scope="module")
def cases() -> list[PreparedCase]:
    return [textured_case(s, f"p{i:03d}", i) for i, s in enumerate((0.9, 1.0, 1.1))]


@pytest.fixture(scope="module")
def draws(cases):
    return draw_masks(MIX, cases, 6, seed=4, cfg=MaskConfig())[0]


@pytest.fixture(scope="module")
def warp(cases):
    gen = build_generator("warp")
    gen.fit(np.concatenate([c.mask for c in cases]), np.concatenate([c.image for c in cases]), "/nonexistent")
    return gen


def test_warp_returns_the_warped_real_slice_exactly(cases, draws, warp):
    by_id = {c.case_id: c for c in cases}
    assert {d.source for d in draws} == {"real", "deformed"}
    for i, draw in enumerate(draws):
        out = warp.sample(draw.mask, seed=i, context=draw.image)
        assert out.dtype == np.float32 and out.shape == draw.mask.shape
        source = by_id[draw.source_case]
        if draw.source == "real":
            np.testing.assert_array_equal(out, source.image)
        else:  # the deformation of its draw, recomputed from the draw's seed: the mask's and the slice's
            mask, image = deform_pair(source.mask, source.image, np.random.default_rng(draw.seed), MaskConfig().deform)
            np.testing.assert_array_equal(mask, draw.mask)
            np.testing.assert_array_equal(out, image)
            assert not np.array_equal(out, source.image)


def test_nothing_is_repainted_or_added_whatever_the_seed(draws, warp):
    draw = next(d for d in draws if d.source == "deformed")
    first, second = warp.sample(draw.mask, seed=0, context=draw.image), warp.sample(draw.mask, seed=99, context=draw.image)
    np.testing.assert_array_equal(first, draw.image)  # heart and background alike
    np.testing.assert_array_equal(second, first)
    first[:] = 0  # the output is the generator's own copy: the draw keeps its slice
    assert draw.image.any()


def test_warp_gets_the_same_masks_as_every_other_generator(cases, draws, warp, tmp_path):
    """One seed and one `synthesis.masks` setting give one set of mask volumes, whatever paints them."""
    gmm = build_generator("gmm", GMMConfig(background="real"))
    gmm.fit(np.concatenate([c.mask for c in cases]), np.concatenate([c.image for c in cases]), tmp_path / "fit")
    again, _ = draw_masks(MIX, cases, 6, seed=4, cfg=MaskConfig())  # what the synthesize stage does per generator
    manifests = {name: synthesize_dataset(gen, d, tmp_path / name, slice_spacing_mm=8.0, inplane_spacing_mm=1.5,
                                          generator_name=name)
                 for name, gen, d in (("warp", warp, draws), ("gmm", gmm, again))}
    columns = ["mask_source", "source_case", "mask_seed", "n_slices"]
    assert manifests["warp"][columns].equals(manifests["gmm"][columns])
    for row_w, row_g, draw in zip(manifests["warp"].itertuples(), manifests["gmm"].itertuples(), draws):
        mask_w = np.asarray(nib.load(tmp_path / "warp" / row_w.mask_path).dataobj)
        mask_g = np.asarray(nib.load(tmp_path / "gmm" / row_g.mask_path).dataobj)
        np.testing.assert_array_equal(mask_w, mask_g)
        image_w = np.asarray(nib.load(tmp_path / "warp" / row_w.path).dataobj).transpose(2, 0, 1) / 1000.0
        np.testing.assert_allclose(image_w, draw.image, rtol=1e-6, atol=1e-6)  # through the file's x 1000 scale


def test_warp_refuses_to_run_without_the_real_slice(draws, warp):
    with pytest.raises(ValueError, match="warp: .*context.*'real' and 'deformed'"):
        warp.sample(draws[0].mask, seed=0)
    with pytest.raises(ValueError, match="context: expected the masks' shape"):
        warp.sample(draws[0].mask, seed=0, context=draws[0].image[:1])


def test_config_refuses_sampled_masks_and_tissue_classes_with_warp(tmp_path):
    def load(payload):
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(payload))
        return load_config(path)

    with pytest.raises(ConfigError, match="generator 'warp' needs the real slice.*remove 'warp' from experiment"):
        load({"synthesis": {"masks": {"source_mix": {"real": 1.0, "sampled": 1.0}}},
              "experiment": {"generators": ["warp"]}})
    with pytest.raises(ConfigError, match=r"synthesis.warp.tissue_classes = 2 is not allowed"):
        load({"synthesis": {"warp": {"tissue_classes": 2}}, "experiment": {"generators": ["warp"]}})
    assert load({"experiment": {"generators": ["warp"]}}).synthesis.warp == WarpConfig()


def test_warp_is_not_learned_and_round_trips_through_a_file(cases, draws, warp, tmp_path):
    assert not issubclass(REGISTRY["warp"], LearnedGenerator)  # trained by one process, no checkpoints
    again = load_generator(warp.save(tmp_path / "warp.pt"))
    assert type(again) is type(warp) and again.config == warp.config
    assert again.slices_fitted == warp.slices_fitted == sum(len(c.mask) for c in cases)
    np.testing.assert_array_equal(again.sample(draws[1].mask, seed=3, context=draws[1].image), draws[1].image)
