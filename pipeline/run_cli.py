"""`cmr-synth run`: the whole experiment from one YAML."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Added with the pipeline stages."""
