"""cmr-synth: does synthetic data improve cardiac MR segmentation, and by how much?

One console entry point; each stage package contributes its own sub-commands, and heavy imports
happen inside the commands so that `--help` stays fast.
"""
from __future__ import annotations

import argparse
import sys

import data.cli
import pipeline.run_cli
import segmentation.cli
import synthesis.cli
from data.types import DataError, WriteError
from pipeline.errors import ConfigError, RunDirLocked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmr-synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (pipeline.run_cli, data.cli, synthesis.cli, segmentation.cli):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a relaunch under torchrun repeats
    try:
        return int(args.func(args) or 0)
    except (DataError, ConfigError, WriteError, RunDirLocked) as exc:  # one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder or a log written outside the atomic writers
        from data.io import write_error

        error = write_error(exc, exc.filename)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
