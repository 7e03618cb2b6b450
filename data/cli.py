"""Console commands of the data stage: `cmr-synth phantom` and `cmr-synth validate-data`."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("phantom", help="write the embedded cardiac MR phantom in the ACDC layout")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--patients", type=int, default=20, help="number of patients (ED + ES each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", default=None, help="scanner style name (default: drawn per patient from the seed)")
    p.add_argument("--workers", type=int, default=1, help="processes writing patients (the same files as one)")
    p.set_defaults(func=_phantom)

    p = subparsers.add_parser("validate-data", help="check a dataset folder and print a per-case summary")
    p.add_argument("root", type=Path)
    p.add_argument("--layout", default="auto", choices=["auto", "acdc", "nnunet"])
    p.add_argument("--label-map", default=None,
                   help="file label -> internal label, e.g. '1:3,2:2,3:1' for M&Ms (1 LV, 2 MYO, 3 RV)")
    p.add_argument("--csv", type=Path, default=None, help="also write the summary table to this CSV")
    p.set_defaults(func=_validate)


def parse_label_map(text: str | None) -> dict[int, int] | None:
    if not text:
        return None
    try:
        return {int(k): int(v) for k, v in (item.split(":") for item in text.split(","))}
    except ValueError as exc:
        raise SystemExit(f"--label-map: expected 'file:internal,...' such as '1:3,2:2,3:1', got {text!r}") from exc


def _phantom(args: argparse.Namespace) -> int:
    from data.phantom import write_phantom

    write_phantom(args.out_dir, n_patients=args.patients, seed=args.seed, style=args.style,
                  workers=args.workers)
    print(f"phantom with {args.patients} patients written to {args.out_dir}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from data.validate import validate_dataset

    report = validate_dataset(args.root, layout=args.layout, label_map=parse_label_map(args.label_map))
    print(report.format_table())
    if args.csv:
        report.to_csv(args.csv)
    return 0 if report.ok else 1
