"""Would styles taken from other patients' images, through the style encoder, make a trained SPADE VAE-GAN vary
the heart more than style codes drawn from N(0, I)? (issue 16's "styles from other real patients' images
through the encoder"). Quality only: no segmenter is trained.

    python -m benchmarks.encoded_styles configs/acdc_lowdata.yaml --profile final --run-dir R --draws 1 2 3

For each draw of a finished run directory: the draw's trained `spade` generator and the quality stage's
diversity masks (`diversity_slices`: the fullest heart slice of up to `quality.diversity_masks` validation
patients; diversity needs no segmenter). Every training slice of the draw with a heart is encoded (the
encoder's mean); a style seed then picks one of those codes instead of drawing N(0, I). Printed: the codes'
spread, and the heart diversity ratio (`synthesis.quality.diversity`, the quality table's
`diversity_heart_ratio`) under both kinds of code. One thread, a few seconds per draw on ACDC.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pipeline.config import load_config
from pipeline.run import Run
from pipeline.units import GeneratorArtifact, artifact, subset_dir
from synthesis.base import load_generator
from synthesis.quality import diversity, diversity_slices


def encoded_codes(generator, images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's mean and standard deviation for every slice of `images` whose mask holds a heart."""
    heart = masks.reshape(len(masks), -1).max(1) > 0
    with torch.no_grad():
        mu, logvar = generator.ema.module.encode(torch.from_numpy(images[heart] * 2 - 1)[:, None])
    return mu.numpy(), np.exp(0.5 * logvar.numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--run-dir", type=Path, required=True, help="a run directory whose spade generators are trained")
    ap.add_argument("--draws", type=int, nargs="+", default=[0])
    ap.add_argument("--fraction", type=float, default=None, help="default: the config's first fraction")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, profile=args.profile, overrides=[f"run_dir={args.run_dir}", "evaluate.sealed=true"])
    run = Run(cfg=cfg, run_dir=args.run_dir)  # sealed: the test patients are not read
    fraction = args.fraction if args.fraction is not None else cfg.experiment.fractions[0]
    val = run.patient_cases(run.split["val"])
    picked = diversity_slices([c.mask for c in val], cfg.quality.diversity_masks)
    masks = np.stack([val[case].mask[z] for case, z in picked])
    context = np.stack([val[case].image[z] for case, z in picked]).astype(np.float32)
    for draw in args.draws:
        unit = f"{subset_dir(fraction, draw)}/spade"
        generator = load_generator(artifact(run, "train_generator", unit, GeneratorArtifact).path)
        if generator.net.encoder is None:
            raise SystemExit(f"{unit} has no style encoder (synthesis.spade.is_vae: false)")
        train = run.patient_cases(run.fraction_patients(fraction, draw))
        codes, sd = encoded_codes(generator, np.concatenate([c.image for c in train]).astype(np.float32),
                                  np.concatenate([c.mask for c in train]))
        print(f"draw {draw}: {len(codes)} encoded training slices; |mean| {np.abs(codes).mean():.3f}, spread over "
              f"slices {codes.std(0).mean():.3f}, posterior sd {sd.mean():.3f} (N(0, I): 0, 1, 1)")
        prior = generator.style_code
        for label, code in (("N(0, I)", prior),
                            ("encoded", lambda seed: torch.from_numpy(
                                codes[np.random.default_rng(seed).integers(len(codes))])[None])):
            generator.style_code = code
            d = diversity(generator, masks, cfg.quality.n_styles, cfg.quality.seed, context=context)
            print(f"  style codes {label:8s} heart diversity ratio {d['diversity_heart_ratio']:.3f}, "
                  f"whole slice {d['diversity_ratio']:.3f}")
        generator.style_code = prior


if __name__ == "__main__":
    main()
