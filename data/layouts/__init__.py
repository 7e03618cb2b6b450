"""Dataset folder layouts: one small adapter per layout behind one interface, picked by a registry.

A layout only *finds* cases (`CaseRef`: paths + metadata, nothing read); `data.validate.load_case`
reads and checks them. Adding a dataset means adding an adapter with `name`, `description`,
`matches(root)` and `list_cases(root, on_error)`, and registering it in `LAYOUTS`.

A test set is just another root: ACDC `.../testing`, nnU-Net `.../DatasetXXX/imagesTs`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from data.layouts.acdc import AcdcLayout
from data.layouts.nnunet import NnunetLayout
from data.types import CaseRef, DataError


@runtime_checkable
class Layout(Protocol):
    name: str
    description: str  # what the layout looks for; shown when no layout matches

    def matches(self, root: Path) -> bool:
        """Cheap check (directory listing only) whether `root` is in this layout."""

    def list_cases(self, root: Path, on_error: Callable[[str, DataError], None] | None = None) -> list[CaseRef]:
        """All cases under `root`, sorted; a bad entry raises, or goes to `on_error(entry name, error)`
        and is skipped."""


# Detection tries layouts in this order.
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (AcdcLayout(), NnunetLayout())}


def detect_layout(root: Path | str) -> str:
    """Name of the first registered layout that `root` is in; DataError listing what was looked for."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    for name, layout in LAYOUTS.items():
        if layout.matches(root):
            return name
    looked_for = "; ".join(layout.description for layout in LAYOUTS.values())
    raise DataError(root, f"no known dataset layout found; looked for {looked_for}")


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ValueError(f"layout {name!r}: expected 'auto' or one of {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def list_cases(root: Path | str, layout: str = "auto",
               on_error: Callable[[str, DataError], None] | None = None) -> list[CaseRef]:
    """Every case under `root`, sorted by (patient, phase); reads no image, so it is fast.

    `on_error` (used by `data.validate.validate_dataset`) collects per-patient errors instead of
    raising at the first one.
    """
    root = Path(root)
    name = detect_layout(root) if layout == "auto" else get_layout(layout).name
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    cases = sorted(LAYOUTS[name].list_cases(root, on_error=on_error), key=lambda c: (c.patient_id, c.phase))
    seen: dict[str, Path] = {}
    for case in cases:
        if case.case_id in seen:
            raise DataError(case.image_path, f"case {case.case_id} also found at {seen[case.case_id]}; "
                                             f"expected one file per patient and phase")
        seen[case.case_id] = case.image_path
    if not cases and on_error is None:
        raise DataError(root, f"no cases found in the {name} layout; expected {LAYOUTS[name].description}")
    return cases


__all__ = ["LAYOUTS", "Layout", "detect_layout", "get_layout", "list_cases"]
