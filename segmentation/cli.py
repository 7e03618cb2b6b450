"""Console commands of the segmentation stage."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands (none yet)."""
