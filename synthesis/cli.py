"""Console commands of the synthesis stage: `cmr-synth synthesize` and `cmr-synth export-nnunet`."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synthesize", help="write a synthetic dataset (ACDC layout) from a trained generator")
    p.add_argument("--generator", type=Path, required=True, help="generator file written by training (.pt)")
    p.add_argument("--masks", type=Path, required=True, help="dataset whose masks are drawn from (any layout)")
    p.add_argument("--out", type=Path, required=True, help="output folder (re-running resumes it)")
    p.add_argument("--n", type=int, required=True, help="number of synthetic volumes")
    p.add_argument("--source-mix", default="real=0.5,deformed=0.5",
                   help="mask sources and weights, from real, deformed, sampled (default: real=0.5,deformed=0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mask draws and volume styles")
    p.add_argument("--target-spacing", type=float, default=1.5, help="in-plane spacing (mm) the masks are resampled to")
    p.add_argument("--crop-size", type=int, default=128, help="side (pixels) of the crop around the image centre")
    p.add_argument("--layout", default="auto", choices=["auto", "acdc", "nnunet"], help="folder layout of --masks")
    p.add_argument("--label-map", default=None, help="file label -> internal label of --masks, e.g. '1:3,2:2,3:1'")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="preprocessing cache (default: OUT/.cache); reused across runs")
    p.set_defaults(func=_synthesize)

    p = subparsers.add_parser("export-nnunet", help="export a synthetic dataset (+ real cases) for nnU-Net v2")
    p.add_argument("synth_dir", type=Path, help="folder written by `cmr-synth synthesize`")
    p.add_argument("out", type=Path, help="nnU-Net raw folder (nnUNet_raw); DatasetXXX_NAME is created in it")
    p.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id, 1..999")
    p.add_argument("--name", required=True, help="dataset name (letters, digits, underscores)")
    p.add_argument("--with-real", type=Path, default=None, help="also export the labelled cases of this dataset")
    p.add_argument("--label-map", default=None, help="file label -> internal label of --with-real")
    p.add_argument("--link", action="store_true", help="hard-link files instead of copying them")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DatasetXXX_NAME")
    p.set_defaults(func=_export)


def _user_errors(command):
    """Bad options or inputs (ValueError) end the command with one clear line instead of a traceback; DataError
    (a ValueError naming a file) is left to `pipeline.cli.main`, which prints it the same way."""
    from functools import wraps

    @wraps(command)
    def run(args: argparse.Namespace) -> int:
        from data.types import DataError

        try:
            return command(args)
        except DataError:
            raise
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from exc

    return run


@_user_errors
def _synthesize(args: argparse.Namespace) -> int:
    from data.cache import prepare_cases
    from data.cli import parse_label_map
    from data.config import PreprocessConfig
    from data.layouts import list_cases
    from synthesis.base import load_generator
    from synthesis.masks import MaskConfig, draw_masks, parse_source_mix
    from synthesis.synthesize import synthesize_dataset

    mix = parse_source_mix(args.source_mix)
    if args.n < 1:
        raise ValueError(f"--n: expected at least 1 volume, got {args.n}")
    generator = load_generator(args.generator)
    preprocess = PreprocessConfig(target_spacing=args.target_spacing, crop_size=args.crop_size)
    refs = [ref for ref in list_cases(args.masks, layout=args.layout) if ref.mask_path is not None]
    cases = prepare_cases(refs, preprocess, args.cache_dir or args.out / ".cache", parse_label_map(args.label_map))
    draws, report = draw_masks(mix, cases, args.n, args.seed, MaskConfig(source_mix=mix))
    print(report.format())
    manifest = synthesize_dataset(generator, draws, args.out, seed=args.seed, generator_name=generator.name,
                                  inplane_spacing_mm=args.target_spacing)
    print(f"{len(manifest)} synthetic volumes ({generator.name}) in {args.out}")
    return 0


@_user_errors
def _export(args: argparse.Namespace) -> int:
    from data.cli import parse_label_map
    from synthesis.export_nnunet import export_nnunet

    folder = export_nnunet(args.synth_dir, args.out, args.dataset_id, args.name, with_real=args.with_real,
                           label_map=parse_label_map(args.label_map), link=args.link, overwrite=args.overwrite)
    print(f"nnU-Net dataset written to {folder}")
    return 0
