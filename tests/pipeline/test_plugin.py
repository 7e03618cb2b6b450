"""A generator is one module: a lab's own, installed as a package with a `cmr_synth.generators` entry point, is
found by the registry, gets its `synthesis.<name>` section validated like ours, and runs through a tiny pipeline;
and `pipeline.yaml` documents exactly the schema the registry assembles."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from pipeline.config import documented_yaml
from synthesis.synthesize import INTENSITY_SCALE
from tests.pipeline.test_run import TINY

REPO = Path(__file__).resolve().parents[2]

TOY_MODULE = '''"""toy: every label painted with one intensity, plus seeded noise (a lab's generator in one module)."""
from dataclasses import dataclass, field

import numpy as np

from synthesis.base import Generator, check_masks, check_pair, register
from synthesis.config import GeneratorConfig


@dataclass
class ToyConfig(GeneratorConfig):
    """One intensity per label."""

    intensities: list[float] = field(default_factory=lambda: [0.1, 0.4, 0.6, 0.9], metadata={
        "len": 4, "min": 0.0, "max": 1.0, "help": "intensity of background, RV, myocardium, LV"})
    noise: float = field(default=0.05, metadata={"min": 0.0, "max": 0.5, "help": "std of the seeded noise"})


@register("toy")
class ToyGenerator(Generator):
    config_class = ToyConfig

    def fit(self, masks, images, out_dir, *, seed=0, dist=None):
        masks, _ = check_pair(masks, images)
        return {"slices_fitted": int(len(masks))}

    def sample(self, masks, *, seed, context=None):
        masks = check_masks(masks)
        lut = np.asarray(self.config.intensities, np.float32)
        noise = np.random.default_rng(seed).normal(0.0, self.config.noise, masks.shape)
        return np.clip(lut[masks] + noise, 0.0, 1.0).astype(np.float32)

    def state(self):
        return {}

    def restore(self, state):
        pass
'''


def install_toy(site: Path) -> None:
    """The toy module plus the metadata pip would write for a package declaring it as an entry point."""
    (site / "toy_generator.py").write_text(TOY_MODULE)
    info = site / "toy_lab-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-lab\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cmr_synth.generators]\ntoy = toy_generator\n")


def run_cli(site: Path, run_dir: Path, *sets: str) -> subprocess.CompletedProcess:
    config = run_dir.parent / "toy.yaml"
    config.write_text("{}\n")  # the built-in defaults
    cmd = [sys.executable, "-m", "pipeline", "run", str(config), "--run-dir", str(run_dir),
           *[arg for item in sets for arg in ("--set", item)]]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_a_generator_from_one_installed_module_runs_through_the_pipeline(phantom_root, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    install_toy(site)
    sets = [f"data.root={phantom_root}", *TINY, "experiment.fractions=[1.0]", "experiment.generators=[toy]",
            "quality.enabled=false"]
    bad = run_cli(site, tmp_path / "bad", *sets, "synthesis.toy.noise=2")  # the plugin's own bounds
    assert bad.returncode != 0 and "synthesis.toy.noise" in bad.stderr and "<= 0.5" in bad.stderr
    assert not (tmp_path / "bad" / "prepare").exists()  # refused before any work

    run_dir = tmp_path / "run"
    done = run_cli(site, run_dir, *sets, "synthesis.toy.noise=0.0", "synthesis.toy.intensities=[0.0, 0.3, 0.5, 0.8]")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    per_case = pd.read_csv(run_dir / "evaluate" / "per_case.csv")
    assert set(per_case["generator"].dropna()) == {"toy"} and per_case["dice_mean"].notna().all()
    images = sorted(p for p in (run_dir / "synthesize").rglob("*_frame01.nii.gz"))
    assert len(images) == 2  # synthesis.n_volumes
    for path in images:  # the section's settings reached the generator: exact label intensities, no noise
        image = np.asarray(nib.load(path).dataobj) / INTENSITY_SCALE
        mask = np.asarray(nib.load(path.with_name(path.name.replace(".nii.gz", "_gt.nii.gz"))).dataobj)
        np.testing.assert_allclose(image, np.array([0.0, 0.3, 0.5, 0.8])[mask], atol=1e-6)


def test_pipeline_yaml_documents_the_assembled_schema():
    """Its base part is `documented_yaml()`: a generator's section and help come from its module alone."""
    text = (REPO / "pipeline.yaml").read_text()
    base = text[text.index("run_dir:"): text.index("\nprofiles:")].strip()
    assert base == documented_yaml().strip()
