"""Typed settings of the data stage. Validation of values happens in `pipeline.config`, in one place."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PreprocessConfig:
    target_spacing: float = field(default=1.5, metadata={"min": 0.1, "max": 10.0,
                                  "help": "in-plane spacing (mm) the slices are resampled to"})
    crop_size: int = field(default=128, metadata={"min": 16, "max": 1024,
                           "help": "side (pixels) of the square crop/pad around the image centre"})
    clip_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5], metadata={
        "len": 2, "min": 0.0, "max": 100.0, "help": "intensity percentiles clipped before scaling to [0, 1]"})


@dataclass
class SplitConfig:
    seed: int = field(default=0, metadata={"help": "seed of the patient-level split"})
    n_test: int = field(default=20, metadata={"min": 0, "help": "test patients (ignored when data.test_root is set)"})
    n_val: int = field(default=10, metadata={"min": 1, "help": "validation patients, taken from the training root"})
    stratify_by: str | None = field(default="group", metadata={
        "help": "metadata key to stratify the split on (ACDC: group); ignored when cases lack it"})


@dataclass
class TestSetConfig:
    """An extra test set, scored separately and never trained on (e.g. another vendor or scanner style)."""

    name: str = field(default="", metadata={"help": "short name used in per_case_extra.csv and the report"})
    root: str = field(default="", metadata={
        "help": "dataset folder; empty = generate a phantom in `phantom_style` (a shifted domain with no data)"})
    layout: str = field(default="auto", metadata={"choices": ["auto", "acdc", "nnunet"], "help": "folder layout"})
    label_map: dict[int, int] | None = field(default=None, metadata={
        "help": "file label -> internal label of this set (its own label order)"})
    phantom_style: str = field(default="philips_like", metadata={
        "choices": ["siemens_like", "philips_like", "lowfield_noisy"], "help": "scanner style of a phantom set"})
    phantom_patients: int = field(default=6, metadata={"min": 1, "help": "patients of a phantom set"})
    phantom_seed: int = field(default=1000, metadata={
        "help": "seed of a phantom set (other than data.phantom_seed: other anatomy than the training phantom)"})


@dataclass
class DataConfig:
    root: str = field(default="", metadata={"help": "dataset folder; empty = generate the embedded phantom"})
    layout: str = field(default="auto", metadata={"choices": ["auto", "acdc", "nnunet"],
                        "help": "folder layout of root / test_root"})
    test_root: str | None = field(default=None, metadata={"help": "separate dataset folder used as the test set"})
    label_map: dict[int, int] | None = field(default=None, metadata={
        "help": "file label -> internal label (0 bg, 1 RV, 2 MYO, 3 LV); e.g. M&Ms {1: 3, 2: 2, 3: 1}"})
    phantom_patients: int = field(default=24, metadata={"min": 4, "help": "patients of the generated phantom"})
    phantom_seed: int = field(default=0, metadata={"help": "seed of the generated phantom"})
    extra_test_sets: list[TestSetConfig] = field(default_factory=list, metadata={
        "unique": False, "help": "extra test sets scored separately (robustness to a shifted domain); each has "
                                 "name, root, layout, label_map (and phantom_style/phantom_patients/phantom_seed "
                                 "when root is empty)"})
    preprocess_workers: int = field(default=1, metadata={
        "role": "runtime", "min": 1, "max": 256,
        "help": "processes that write the phantom (no data.root) and preprocess cases into the slice store; the "
                "same files as with 1"})
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
