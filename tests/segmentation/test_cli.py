"""`cmr-synth segment`: new images in, labels on each image's own grid out."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from data.config import PreprocessConfig
from pipeline.cli import main
from segmentation.model import save_checkpoint
from tests.segmentation.cases import OracleNet, heart_volume, tiny_config, write_case


@pytest.fixture
def oracle_checkpoint(tmp_path, monkeypatch):
    """A checkpoint whose 'network' reads labels from label images, so the output can be checked exactly."""
    import segmentation.model as model_module

    cfg = tiny_config()
    monkeypatch.setattr(model_module, "build_model", lambda _cfg: OracleNet())
    return save_checkpoint(tmp_path / "oracle.pt", model=OracleNet(), cfg=cfg, step=1,
                           preprocess=PreprocessConfig(target_spacing=1.5, crop_size=48, clip_percentiles=[0, 100]))


def _affine():
    return np.array([[-1.5, 0.0, 0.0, 10.0], [0.0, 1.5, 0.0, -20.0], [0.0, 0.0, 8.0, 5.0], [0, 0, 0, 1]])


def test_segment_a_folder_writes_predictions_on_each_inputs_grid(tmp_path, oracle_checkpoint):
    inputs = tmp_path / "in"
    refs = []
    for name, shape in (("a_ED", (30, 34, 4)), ("b_ES", (36, 28, 3))):
        image, mask = heart_volume(shape, seed=1, label_image=True)
        refs.append(write_case(inputs, name, image, mask, _affine()))  # the *_gt masks must be skipped
    cine = nib.Nifti1Image(np.zeros((8, 8, 2, 3), np.float32), _affine())
    nib.save(cine, str(inputs / "c_4d.nii.gz"))  # 4D series: skipped, not an error

    rc = main(["segment", "--checkpoint", str(oracle_checkpoint), "--input", str(inputs), "--output",
               str(tmp_path / "out")])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_ED_pred.nii.gz", "b_ES_pred.nii.gz"]
    for ref in refs:
        written = nib.load(str(tmp_path / "out" / f"{ref.image_path.name[:-7]}_pred.nii.gz"))
        original = nib.load(str(ref.image_path))
        assert written.shape == original.shape and np.allclose(written.affine, original.affine)
        assert np.array_equal(np.asarray(written.dataobj), np.asarray(nib.load(str(ref.mask_path)).dataobj))


def test_segment_a_single_file_with_a_trained_checkpoint(tmp_path):
    from segmentation.model import build_model

    torch.manual_seed(0)
    cfg = tiny_config()
    ckpt = save_checkpoint(tmp_path / "best.pt", model=build_model(cfg), cfg=cfg, step=1,
                           preprocess=PreprocessConfig(target_spacing=1.5, crop_size=32))
    image, _ = heart_volume((30, 26, 5), seed=0)
    ref = write_case(tmp_path / "in", "x_ED", image, None, _affine())
    assert main(["segment", "--checkpoint", str(ckpt), "--input", str(ref.image_path), "--output",
                 str(tmp_path / "out")]) == 0
    written = nib.load(str(tmp_path / "out" / "x_ED_pred.nii.gz"))
    assert written.shape == (30, 26, 5) and np.allclose(written.affine, _affine())
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 3}


def test_segment_reports_bad_input_in_one_line(tmp_path, capsys):
    from segmentation.model import build_model

    cfg = tiny_config()
    no_preprocess = save_checkpoint(tmp_path / "old.pt", model=build_model(cfg), cfg=cfg, step=1)
    image, _ = heart_volume((20, 20, 3))
    ref = write_case(tmp_path / "in", "y_ED", image, None, _affine())
    assert main(["segment", "--checkpoint", str(no_preprocess), "--input", str(ref.image_path),
                 "--output", str(tmp_path / "out")]) == 2
    assert "preprocessing config" in capsys.readouterr().err
    assert main(["segment", "--checkpoint", str(tmp_path / "missing.pt"), "--input", str(ref.image_path),
                 "--output", str(tmp_path / "out")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def _wrong_files(folder) -> dict[str, tuple]:
    """Files a user might pass as --checkpoint by mistake, with what the error should call them."""
    import shutil

    from segmentation.model import build_model
    from synthesis.base import build_generator
    from tests.synthesis.test_generators import tiny_config as generator_config, toy_pairs

    folder.mkdir()
    masks, images = toy_pairs(n=4)
    gmm = build_generator("gmm", generator_config("gmm"))
    gmm.fit(masks, images, folder / "gmm")
    cvae = build_generator("cvae", generator_config("cvae", steps=1, checkpoint_every=1, sample_every=1))
    cvae.fit(masks, images, folder / "cvae")
    cfg = tiny_config()
    segmentation = save_checkpoint(folder / "seg.pt", model=build_model(cfg), cfg=cfg, step=1).read_bytes()
    (folder / "truncated.pt").write_bytes(segmentation[: len(segmentation) // 2])
    torch.save(build_model(cfg).state_dict(), folder / "state_dict.pt")
    torch.save(torch.nn.Linear(2, 2), folder / "module.pt")
    image, _ = heart_volume((8, 8, 2))
    shutil.copy(write_case(folder, "img_ED", image, None, _affine()).image_path, folder / "image.pt")
    return {
        "generator file": (gmm.save(folder / "generator.pt"), r"a 'gmm' generator file"),
        "generator training checkpoint": (folder / "cvae" / "checkpoint.pt",
                                          r"a 'cvae' generator's training checkpoint"),
        "truncated": (folder / "truncated.pt", r"a truncated or corrupt torch file \("),
        "foreign state dict": (folder / "state_dict.pt", r"a torch file with keys \['model\.0\..*not one cmr-synth"),
        "pickled module": (folder / "module.pt", r"a torch file holding Python objects"),
        "nifti": (folder / "image.pt", r"gzip data such as a \.nii\.gz image"),
    }


def test_a_file_that_is_not_a_segmentation_checkpoint_is_named_in_one_line(tmp_path, capsys):
    """Issue 17: a generator's checkpoint.pt used to crash with 'segmentation.strides: expected 2 values'."""
    import re

    image, _ = heart_volume((20, 20, 3))
    ref = write_case(tmp_path / "in", "y_ED", image, None, _affine())
    for name, (path, kind) in _wrong_files(tmp_path / "wrong").items():
        rc = main(["segment", "--checkpoint", str(path), "--input", str(ref.image_path),
                   "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert rc == 2, name
        assert re.fullmatch(rf"error: not a cmr-synth segmentation checkpoint: {re.escape(str(path))} "
                            rf"\(it is {kind}.*\)", err), (name, err)
    assert not (tmp_path / "out").exists()
