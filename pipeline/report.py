"""report.html (self-contained, images embedded) and report.md (images beside it) from a finished run.

Every number shown comes from the evaluate stage's CSVs (summary.csv, statistics.csv, seeds.csv), so the
report can be checked against them; figures are drawn here with matplotlib from the same frames.
"""
from __future__ import annotations

import base64
import html
import io
import os
import platform
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from data.io import read_table, write_bytes, write_text  # noqa: E402
from data.types import STRUCTURES  # noqa: E402
from pipeline.cache import UNSEALED, read_json, unsealings  # noqa: E402
from pipeline.config import PipelineConfig, to_dict  # noqa: E402
from pipeline.units import (STAGES, GeneratorArtifact, QualityArtifact, SyntheticSet, artifact,  # noqa: E402
                            quality_unit, subset_dir)
from segmentation.statistics import CONDITION, bootstrap_ci, condition_label, headline, with_conditions  # noqa: E402



class Run(Protocol):
    """What the report reads of a run (`pipeline.run.Run`): its config, split, prepared cases and stage folders."""

    cfg: PipelineConfig
    run_dir: Path
    split: dict[str, Any]
    test_open: bool
    mode: str
    ctx: Any

    def patient_cases(self, patients: list[str]) -> list[Any]: ...

    def stage_dir(self, stage: str) -> Path: ...

DRAW_MODES = {"disjoint": "pairwise disjoint (no patient in two draws)",
              "independent": "independent seeded draws (too few training patients for disjoint ones: draws may "
                             "share patients)",
              "all": "every training patient (one draw)",
              "cross-validation": "outer cross-validation: each draw is tested on its own fold of the patients "
                                  "outside validation and trains on the other folds' patients (independent draws)"}
MASK_COLOURS = {1: (0.2, 0.6, 1.0), 2: (0.2, 0.9, 0.3), 3: (1.0, 0.3, 0.3)}  # RV blue, MYO green, LV red


class _Doc:
    """Builds the HTML and Markdown versions side by side so they cannot drift apart."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.html: list[str] = []
        self.md: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"{'#' * level} {text}\n")

    def para(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(f"{text}\n")

    def table(self, frame: pd.DataFrame, floatfmt: str = "{:.3f}") -> None:
        shown = frame.copy()
        for col in shown.columns:
            if pd.api.types.is_float_dtype(shown[col]):
                shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else floatfmt.format(v))
        self.html.append('<div class="scroll">' + shown.to_html(index=False, escape=True, border=0, classes="t")
                         + "</div>")
        header = "| " + " | ".join(map(str, shown.columns)) + " |"
        rule = "|" + "---|" * len(shown.columns)
        rows = ["| " + " | ".join(map(str, r)) + " |" for r in shown.itertuples(index=False)]
        self.md.append("\n".join([header, rule, *rows]) + "\n")

    def figure(self, fig: plt.Figure, name: str, caption: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        self._embed(buf.getvalue(), name, caption)

    def _embed(self, png: bytes, name: str, caption: str) -> None:
        write_bytes(self.out_dir / "figures" / f"{name}.png", png)
        data = base64.b64encode(png).decode()
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md.append(f"![{caption}](figures/{name}.png)\n\n*{caption}*\n")

    def image(self, path: Path, name: str, caption: str) -> None:
        """An existing PNG of the run (e.g. the quality stage's grids), embedded like a figure."""
        self._embed(Path(path).read_bytes(), name, caption)

    def code(self, text: str) -> None:
        self.html.append(f"<pre>{html.escape(text)}</pre>")
        self.md.append(f"```\n{text}\n```\n")


STYLE = """<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table.t{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}table.t td,table.t th{padding:3px 8px;
border-bottom:1px solid #ddd;text-align:right}table.t th{background:#f3f3f3}figure{margin:1em 0}
img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}
.scroll{overflow-x:auto}.headline{font-size:1.1em;background:#eef6ff;padding:.6em 1em;border-left:4px solid #3b82f6}</style>"""


def nothing_to_compare(per_case: pd.DataFrame) -> str:
    """The headline of a run whose statistics table is empty: why there was nothing to compare."""
    arms = sorted(set(per_case["arm"])) if "arm" in per_case.columns else []
    if arms == ["real"]:
        return "Only the real arm was run: nothing to compare."
    if "real" not in arms:
        return (f"No real arm was run (arms: {', '.join(arms) or 'none'}): no reference to compare with; add real "
                f"to experiment.arms for differences, CIs and tests.")
    return "No comparison could be made (see statistics.csv)."


def write_report(run: "Run") -> dict[str, Path]:
    out_dir = run.stage_dir("report")
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    ev = run.stage_dir("evaluate")
    per_case = read_table(ev / "per_case.csv")
    summary = read_table(ev / "summary.csv")
    comparison = read_table(ev / "statistics.csv")
    seeds = read_table(ev / "seeds.csv")
    doc = _Doc(out_dir)

    doc.heading("cmr-synth report: does synthetic data improve cardiac MR segmentation?", 1)
    sentences = headline(comparison) if len(comparison) else [nothing_to_compare(per_case)]
    if not run.test_open:
        sentences = [SEALED] + [f"On the validation patients: {s}" for s in sentences]
    doc.html.append("".join(f'<p class="headline">{html.escape(s)}</p>' for s in sentences))
    doc.md.extend(f"> {s}\n" for s in sentences)
    use = synthetic_use(run.cfg)
    if use:
        doc.para(use)
    if not run.cfg.data.root:
        doc.para("These results are on the embedded phantom, generated for this run: they demonstrate the pipeline "
                 "and say nothing about whether synthetic data helps on real patients. That answer has to come from "
                 "a real dataset (e.g. configs/acdc_lowdata.yaml), compared with the strongest augmentation-only arm "
                 "and replicated over draws of training patients.")

    doc.heading("Data")
    split = run.split
    doc.table(pd.DataFrame([{"split": k, "patients": len(split[k])} for k in ("train", "val", "test")]
                           + [{"split": f"train, fraction {f}", "patients": len(v)}
                              for f, v in split["fractions"].items()]))
    for fraction, draws in split.get("draws", {}).items():
        n = len(draws["patients"])
        doc.para(f"Fraction {fraction}: {n} draw{'s' if n != 1 else ''} of the training patients, "
                 + DRAW_MODES[draws["mode"]] + "; generators and segmenters of a draw train on its patients only "
                 "(prepare/splits.json): " + "; ".join(
                     f"draw {k}: {', '.join(p)}" + (f" (tested on fold {draws['folds'][k]})" if "folds" in draws else "")
                     for k, p in enumerate(draws["patients"])) + ".")
    for k, fold in enumerate(split.get("test_folds") or []):
        doc.para(f"Outer fold {k} (test patients of its draws): {', '.join(fold)}.")
    source = run.cfg.data.root or f"embedded phantom ({run.cfg.data.phantom_patients} patients, seed "\
                                   f"{run.cfg.data.phantom_seed})"
    doc.para(f"Source: {source}. Test set: {run.cfg.data.test_root or 'held-out patients of the same root'}.")
    _seal_section(doc, run)
    train_cases = run.patient_cases(split["train"])[:4]
    doc.figure(_overlay_grid([c.image for c in train_cases], [c.mask for c in train_cases],
                             [c.case_id for c in train_cases]), "data_examples",
               "Real training slices (mid-ventricular) with their masks: RV blue, MYO green, LV red.")

    for name in run.cfg.experiment.generators if any(a != "real" for a in run.cfg.experiment.arms) else []:
        doc.heading(f"Generator: {name}")
        fig = _generator_grid(run, name)
        if fig is not None:
            doc.figure(fig, f"generator_{name}", f"{name}: held-out real slices (top) and synthetic images "
                       f"generated from the same masks with two style seeds (rows below).")
        fig = _synthetic_examples(run, name)
        if fig is not None:
            doc.figure(fig, f"synthetic_{name}", f"{name}: synthetic volumes as written to disk (mid slices), "
                       f"with their mask sources.")

    doc.heading("Results")
    doc.para("Per fraction and arm: mean ± sd over test cases (3D, original voxel grid) and seeds; HD95 in mm, "
             "EF errors in percentage points (per patient).")
    doc.table(_results_table(summary, seeds))
    if len(seeds):
        doc.para("Mean Dice over test patients, mean ± sd over seeds (evaluate/seeds.csv). n_converged: segmenters "
                 "whose validation Dice had flattened (experiment.plateau_window, plateau_min_delta); "
                 "final_val_dice_mean: their validation Dice at the last step.")
        doc.table(seeds)
    if len(comparison):
        doc.para("Paired comparison with the real arm (evaluate/statistics.csv, which also holds each run's difference, "
                 "seed_diffs and draw_diffs): difference in mean Dice, "
                 "bootstrap 95 % CI (over test patients with one draw of training patients; over draws, "
                 "then test patients within each, with several), Wilcoxon signed-rank p over patients; the "
                 "differences per run (draw x seed) with a t-test over them, and the draws with a positive "
                 "difference. converged / real_below_floor: whether the row can be read as evidence (both arms' "
                 "segmenters converged, the real arm above experiment.real_dice_floor); the headline and the CSV's "
                 "caveat column say why not.")
        doc.table(comparison[[c for c in STATISTICS_SHOWN if c in comparison]])
        draws = read_table(ev / "draws.csv")
        if len(draws) and draws["draw"].nunique() > 1:
            doc.para("Per draw of training patients (evaluate/draws.csv): the difference to real on that draw "
                     "alone, with its bootstrap 95 % CI over test patients.")
            doc.table(draws[["fraction", "draw", "arm", "generator", "augmentation", "reference", "diff_mean",
                             "ci_low", "ci_high", "seeds_positive", "n_seeds"]])
            doc.figure(_forest(draws, comparison), "forest", "Difference in mean Dice to real, one row per draw "
                       "of training patients (95 % CI over test patients), and the pooled estimate (diamond; "
                       "95 % CI over draws, then patients). Rows left of 0: the draw lost.")
    _selection_section(doc, ev)
    doc.figure(_dice_vs_fraction(per_case, run.cfg.experiment.bootstrap_samples), "dice_vs_fraction",
               "Mean Dice vs real-data fraction; bands: bootstrap 95 % CI over test patients.")
    doc.figure(_boxplots(per_case), "boxplots", "Dice per structure and condition (one point per test "
               "patient, averaged over phases and seeds).")
    robustness = read_table(ev / "robustness.csv")
    if len(robustness) and run.cfg.data.extra_test_sets:
        doc.heading("Robustness: shifted-domain test sets")
        sets = "; ".join(f"{t.name}: {t.root or f'phantom, {t.phantom_style} style, {t.phantom_patients} patients'}"
                         for t in run.cfg.data.extra_test_sets)
        doc.para(f"Each arm scored on each extra test set ({sets}); no patient of these sets was trained on. "
                 f"Mean Dice over patients, mean ± sd over seeds, and the paired difference to the real arm on "
                 f"the same set (bootstrap 95 % CI over patients, t-test over seeds; evaluate/robustness.csv). "
                 f"Synthetic data makes the segmenter more robust only where the difference grows off-domain.")
        doc.table(robustness)
    doc.para("Every summary figure, identical to evaluate/summary.csv:")
    doc.table(summary)

    _quality_section(doc, run)

    doc.heading("How it was run")
    doc.table(_timings(run))
    doc.table(pd.DataFrame([{"item": k, "value": v} for k, v in _environment().items()]))
    doc.code(yaml.safe_dump(to_dict(run.cfg), sort_keys=False))

    body = "\n".join(doc.html)
    html_path = write_text(out_dir / "report.html", f"<!doctype html><html><head><meta charset='utf-8'>"
                                                    f"<title>cmr-synth report</title>{STYLE}</head><body>{body}"
                                                    f"</body></html>\n")
    md_path = write_text(out_dir / "report.md", "\n".join(doc.md))
    return {"html": html_path, "md": md_path}


# The columns of statistics.csv the report shows (the per-run differences, the method and the caveat's text stay in
# the CSV; the headline states each caveat): a table of every column squeezes its last column into single words.
STATISTICS_SHOWN = ["fraction", "arm", "generator", "augmentation", "reference_kind", "reference", "n_patients",
                    "reference_mean", "arm_mean", "diff_mean", "ci_low", "ci_high", "p_wilcoxon_patients",
                    "seeds_positive", "n_seeds", "p_ttest_seeds", "draws_positive", "n_draws", "converged",
                    "real_below_floor"]

QUALITY_COLUMNS = {
    "generator": "set", "consistency_dice_mean": "seg. consistency Dice", "consistency_gap": "gap to real",
    "fd": "Fréchet dist.", "fd_noise_floor": "FD noise floor", "kid_mean": "KID", "memorised_fraction": "memorised",
    "memorisation_flagged": "flagged", "nn_ssim_median": "NN SSIM (median)", "diversity_l1": "style diversity L1",
    "diversity_ratio": "within/between styles", "diversity_heart_ratio": "within/between styles (heart)",
    "intensity_LV_mean": "LV mean", "intensity_MYO_mean": "MYO mean",
    "intensity_RV_mean": "RV mean",
}


def _quality_section(doc: _Doc, run: "Run") -> None:
    table = read_table(run.stage_dir("quality") / "quality.csv")
    if table.empty:
        return
    doc.heading("Synthetic data quality")
    doc.para("Judge: the real arm's segmenter (first seed) at each fraction. Row 'real': the real validation images "
             "scored exactly like a generator's output, i.e. what a perfect generator would get at these set sizes. "
             "Segmentation consistency: 3D Dice of the judge on images synthesised from the validation masks "
             "(gap = real-image Dice minus it). Fréchet distance and KID: in the judge's encoder features (global "
             "average pooled output of every encoder level and the bottleneck), synthetic vs real training slices; "
             "noise floor = the same distance between two disjoint patient halves of the real training slices. "
             "Memorised: fraction of synthetic slices closer (normalised L2) to a training slice than any two "
             "real patients' slices are and also more similar by SSIM (than any real pair, and than "
             "quality.memorisation_min_ssim); flagged above the configured fraction. Diversity: mean |difference| between "
             "style seeds of the same mask, and its ratio to the difference between masks (about 0 = style ignored), "
             "over whole slices and over the heart only (a generator that keeps the real background changes nothing "
             "else with its seed). "
             "Intensities: mean of each structure's pixels in [0, 1]. All columns: quality/quality.csv.")
    for fraction, at in table.groupby("fraction", sort=True):
        columns = [c for c in QUALITY_COLUMNS if c in at.columns]
        if "draw" in at and at["draw"].nunique() > 1:  # one judge and one generator per draw of patients
            columns.insert(0, "draw")
        shown = at[columns].copy()
        if "kid_mean" in shown:  # KID is small (1e-4 .. 1e-2): three decimals would show zeros
            shown["kid_mean"] = shown["kid_mean"].map(lambda v: f"{v:.2e}")
        shown = shown.rename(columns=QUALITY_COLUMNS)
        doc.para(f"Fraction {fraction:g} of the real training patients:")
        doc.table(shown)
    fraction = min(table["fraction"])
    made = _quality_figures(run, fraction)
    for name in run.cfg.experiment.generators:
        for kind, caption in (("styles", "one held-out mask per column, one style seed per row"),
                              ("pairs", "closest synthetic slices (top) and their nearest real training slices")):
            path = made.figure(kind, name)
            if path.is_file():
                doc.image(path, f"quality_{kind}_{name}", f"{name} (fraction {fraction:g}): {caption}.")


def _quality_figures(run: "Run", fraction: float) -> QualityArtifact:
    """Draw 0's quality unit at `fraction`; a run directory whose quality stage ran before the units moved below
    `<subset>/generators` (2026-12-06) still has it in the subset folder, and its report is rebuilt from there."""
    try:
        return artifact(run, "quality", quality_unit(fraction), QualityArtifact)
    except KeyError:
        return artifact(run, "quality", subset_dir(fraction), QualityArtifact)


SEALED = ("TEST SET SEALED (evaluate.sealed): no test patient was read; every number in this report is on the "
          "validation patients, which also chose each segmenter's checkpoint and the best augmentation-only arm, so "
          "they are optimistic. `cmr-synth run CONFIG --unseal` scores the test set once, and records it.")


def _selection_section(doc: _Doc, ev: Path) -> None:
    """What a swept knob was set to for each result, and on what it was chosen (evaluate/selection.csv)."""
    if not (ev / "selection.csv").is_file():
        return
    selection = read_table(ev / "selection.csv")
    doc.heading("Choices made on validation")
    doc.para("Each real+synthetic arm was trained with every synthetic share of experiment.synthetic_ratios; every "
             "result above uses the share in `chosen`, picked per fraction x draw x generator x augmentation as "
             "`chosen_on` says, never on the test patients (val_dice: each share's validation Dice; the test "
             "scores of all shares are in evaluate/variants.csv, for the record only).")
    if len(selection):
        doc.table(selection)


def _seal_section(doc: _Doc, run: "Run") -> None:
    """Whether the test set is sealed, and every time it was unsealed (RUN_DIR/unsealed.json)."""
    if not run.cfg.evaluate.sealed:
        return
    doc.heading("Sealed test set")
    records = unsealings(run.run_dir)
    if not run.test_open:
        doc.para(SEALED)
    if records:
        doc.para(f"The test set of this run directory was unsealed {len(records)} time(s) ({UNSEALED}); "
                 f"config_hash identifies the configuration that was scored, scored_now is false where an "
                 f"earlier scoring of the same configuration was shown again:")
        doc.table(pd.DataFrame(records))
    else:
        doc.para(f"Never unsealed ({UNSEALED} is absent).")


def synthetic_use(cfg: PipelineConfig) -> str:
    """How the real+synthetic arms used their synthetic slices, in words ('' without such an arm): the settings
    that make two runs' 'real+synthetic' rows different experiments (generator mode, share, filter)."""
    if "real+synthetic" not in cfg.experiment.arms:
        return ""
    seg, parts = cfg.segmentation, []
    for name in cfg.experiment.generators:
        gen = cfg.synthesis.generator_config(name)
        if getattr(gen, "background", "") == "real":
            window = getattr(gen, "crop_px", 0)
            margin = getattr(gen, "inpaint_margin_px", None)
            parts.append(f"{name} keeps the real slice outside the heart"
                         + (f" (dilated by {margin:g} px)" if margin is not None else "") + " and paints the heart"
                         + (f" on {window} x {window}-px heart-centred windows" if window else ""))
    if cfg.experiment.synthetic_ratios:
        share = (f"the synthetic share of each batch was one of {cfg.experiment.synthetic_ratios} "
                 f"(experiment.synthetic_ratios; the one used is in the selection table)")
    else:
        share = f"synthetic share of each batch {seg.synthetic_ratio:g} (segmentation.synthetic_ratio)"
    if seg.synthetic_schedule != "constant":
        share += f", {seg.synthetic_schedule.replace('_', ' ')} over training (segmentation.synthetic_schedule)"
    parts.append(share)
    parts.append(f"the {seg.synthetic_filter:.0%} of the synthetic slices that the real arm's segmenter agrees least "
                 f"with were dropped (segmentation.synthetic_filter; each segmenter's synthetic_filter.csv)"
                 if seg.synthetic_filter else "every synthetic slice kept (segmentation.synthetic_filter 0)")
    own = cfg.experiment.segmentation_by_generator
    if own:
        parts.append("except where a generator has its own (experiment.segmentation_by_generator): " + ", ".join(
            f"{name} " + " and ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())
            for name, s in own.items()))
    return "Real+synthetic arms: " + "; ".join(parts) + "."


def headline_table(run: "Run") -> str:
    """What `make run` prints at the end: mean Dice ± sd over seeds per condition, then the headlines."""
    ev = run.stage_dir("evaluate")
    seeds = read_table(ev / "seeds.csv")
    comparison = read_table(ev / "statistics.csv")
    lines = ["fraction  condition                      mean Dice (sd over seeds)  converged"]
    seeds = with_conditions(seeds)
    for row in seeds.itertuples():
        label = condition_label(row.arm, row.generator, row.augmentation)
        label += f", draw {row.draw}" if seeds["draw"].nunique() > 1 else ""
        lines.append(f"{row.fraction:<9g} {label:<30} {row.dice_mean_mean:.3f} ({row.dice_mean_sd:.3f})"
                     f"{'':15}{convergence_note(row)}")
    sealed = [] if run.test_open else [SEALED]
    use = synthetic_use(run.cfg)
    return "\n".join(sealed + lines + [""] + (headline(comparison) if len(comparison) else []) + ([use] if use else []))


def convergence_note(row: Any) -> str:
    """'2/2 seeds' when every segmenter of a seeds.csv row converged, else the count and a warning."""
    n_converged = getattr(row, "n_converged", None)
    if n_converged is None or pd.isna(n_converged):
        return ""
    note = f"{int(n_converged)}/{int(row.n_seeds)} seeds"
    return note if int(n_converged) == int(row.n_seeds) else f"{note}: NOT CONVERGED"


# ----------------------------------------------------------------------------------------------- figures
def _mid(volume: np.ndarray, mask: np.ndarray | None = None) -> int:
    if mask is not None and mask.any():
        slices = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
        return int(slices[len(slices) // 2])
    return len(volume) // 2


def _overlay(ax: plt.Axes, image: np.ndarray, mask: np.ndarray | None) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    if mask is not None:
        rgba = np.zeros(mask.shape + (4,))
        for label, colour in MASK_COLOURS.items():
            rgba[mask == label] = (*colour, 0.35)
        ax.imshow(rgba)
    ax.axis("off")


def _overlay_grid(images: list[np.ndarray], masks: list[np.ndarray], titles: list[str]) -> plt.Figure:
    fig, axes = plt.subplots(2, len(images), figsize=(2.4 * len(images), 5), squeeze=False)
    for i, (image, mask, title) in enumerate(zip(images, masks, titles)):
        z = _mid(image, mask)
        _overlay(axes[0, i], image[z], None)
        _overlay(axes[1, i], image[z], mask[z])
        axes[0, i].set_title(title, fontsize=8)
    return fig


def _generator_grid(run: "Run", name: str) -> plt.Figure | None:
    from synthesis.base import load_generator

    fraction = min(run.cfg.experiment.fractions)
    path = Path(artifact(run, "train_generator", f"{subset_dir(fraction)}/{name}", GeneratorArtifact).path)
    if not path.is_file():
        return None
    generator = load_generator(path)
    cases = run.patient_cases(run.split["val"])[:5]
    images = np.stack([c.image[_mid(c.image, c.mask)] for c in cases])
    masks = np.stack([c.mask[_mid(c.image, c.mask)] for c in cases])
    rows = [("real", images)] + [(f"seed {s}", generator.sample(masks, seed=s, context=images)) for s in (0, 1)]
    fig, axes = plt.subplots(len(rows) + 1, len(cases), figsize=(2.2 * len(cases), 2.2 * (len(rows) + 1)),
                             squeeze=False)
    for j in range(len(cases)):
        _overlay(axes[0, j], np.zeros_like(images[j]), masks[j])
        for i, (label, row) in enumerate(rows, start=1):
            _overlay(axes[i, j], row[j], None)
            if j == 0:
                axes[i, j].set_title(label, fontsize=8, loc="left")
    axes[0, 0].set_title(f"masks (fraction {fraction:g})", fontsize=8, loc="left")
    return fig


def _synthetic_examples(run: "Run", name: str) -> plt.Figure | None:
    from data.io import read_volume
    from synthesis.synthesize import MANIFEST, read_manifest

    fraction = min(run.cfg.experiment.fractions)
    root = Path(artifact(run, "synthesize", f"{subset_dir(fraction)}/{name}", SyntheticSet).cases_dir)
    if not (root / MANIFEST).is_file():
        return None
    rows = read_manifest(root).groupby("mask_source").head(3).head(6)  # its paths are checked to stay in root
    fig, axes = plt.subplots(1, len(rows), figsize=(2.4 * len(rows), 2.6), squeeze=False)
    for ax, row in zip(axes[0], rows.itertuples()):
        image = read_volume(root / row.path).array.astype(np.float32)
        mask = read_volume(root / row.mask_path).array
        z = _mid(np.moveaxis(image, -1, 0), np.moveaxis(mask, -1, 0))
        img = image[..., z] / max(float(np.percentile(image, 99.5)), 1e-6)
        _overlay(ax, np.clip(img, 0, 1), None)
        ax.set_title(f"{row.case}\n{row.mask_source}", fontsize=7)
    return fig


def _results_table(summary: pd.DataFrame, seeds: pd.DataFrame | None = None) -> pd.DataFrame:
    """summary.csv (long) -> one row per fraction x condition, one column per metric x structure; with seeds.csv,
    a column saying how many of the condition's segmenters had converged, so no number stands unqualified."""
    if summary.empty:
        return summary
    seeds = with_conditions(seeds) if seeds is not None and len(seeds) else None
    if seeds is not None and "n_converged" in seeds:  # every draw's segmenters of a condition together
        seeds = seeds.groupby(CONDITION, as_index=False)[["n_converged", "n_seeds"]].sum()
    trained = {(float(r.fraction), r.arm, r.generator, r.augmentation): convergence_note(r)
               for r in seeds.itertuples()} if seeds is not None and "n_converged" in seeds else {}
    wanted = [("dice", s) for s in (*STRUCTURES, "mean")] + [("hd95", s) for s in STRUCTURES] + \
             [("ef_abs_err", "LV"), ("ef_abs_err", "RV")]
    rows = []
    for (fraction, arm, generator, augmentation), at in with_conditions(summary).groupby(CONDITION, sort=True):
        row = {"fraction": f"{fraction:g}", "condition": condition_label(arm, generator, augmentation)}
        if trained:
            row["converged"] = trained.get((float(fraction), arm, generator, augmentation), "")
        for metric, structure in wanted:
            hit = at[(at["metric"] == metric) & (at["structure"] == structure)]
            if len(hit):
                mean, sd = hit["mean"].iloc[0], hit["sd"].iloc[0]
                row[f"{metric} {structure}"] = f"{mean:.3f} ± {sd:.3f}" if metric == "dice" else \
                    f"{mean:.1f} ± {sd:.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _conditions(per_case: pd.DataFrame) -> pd.Series:
    frame = with_conditions(per_case)
    return frame.apply(lambda r: condition_label(r["arm"], r["generator"], r["augmentation"]), axis=1)


def _dice_vs_fraction(per_case: pd.DataFrame, n_boot: int) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 4))
    frame = per_case.assign(condition=_conditions(per_case))
    for condition, rows in frame.groupby("condition"):
        xs, means, lows, highs = [], [], [], []
        for fraction, at in rows.groupby("fraction"):
            by_patient = at.groupby("patient")["dice_mean"].mean().to_numpy()
            low, high = bootstrap_ci(by_patient - by_patient.mean(), n_boot=n_boot)
            xs.append(fraction)
            means.append(by_patient.mean())
            lows.append(by_patient.mean() + (low if not np.isnan(low) else 0))
            highs.append(by_patient.mean() + (high if not np.isnan(high) else 0))
        ax.plot(xs, means, marker="o", label=condition)
        ax.fill_between(xs, lows, highs, alpha=0.2)
    fractions = sorted(per_case["fraction"].unique())
    if len(fractions) > 2 and fractions[-1] / fractions[0] > 4:
        ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.set_xlabel("fraction of real training patients")
    ax.set_ylabel("mean Dice (RV, MYO, LV; 3D)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _forest(draws: pd.DataFrame, comparison: pd.DataFrame) -> plt.Figure:
    """One row per fraction x condition x draw (its difference to real and CI), then that condition's pooled row."""
    pooled = with_conditions(comparison)
    pooled = pooled[pooled["reference_kind"] == "real"] if "reference_kind" in pooled else pooled
    rows = []  # (label, diff, low, high, is_pooled)
    for key, at in with_conditions(draws).groupby(CONDITION, sort=True):
        label = f"{condition_label(*key[1:])} @{key[0]:g}"
        rows += [(f"{label}, draw {r.draw}", r.diff_mean, r.ci_low, r.ci_high, False) for r in at.itertuples()]
        hit = pooled[(pooled[CONDITION] == pd.Series(dict(zip(CONDITION, key)))).all(axis=1)]
        if len(hit):
            r = hit.iloc[0]
            rows.append((f"{label}, pooled", r.diff_mean, r.ci_low, r.ci_high, True))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    for y, (label, diff, low, high, is_pooled) in enumerate(reversed(rows)):
        err = [[diff - low], [high - diff]] if pd.notna(low) and pd.notna(high) else None
        ax.errorbar(100 * diff, y, xerr=None if err is None else 100 * np.asarray(err), fmt="D" if is_pooled
                    else "o", color="black" if is_pooled else "tab:blue", capsize=3, ms=7 if is_pooled else 5)
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=8)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_xlabel("difference in mean Dice to real (points)")
    ax.grid(alpha=0.3, axis="x")
    return fig


def _boxplots(per_case: pd.DataFrame) -> plt.Figure:
    frame = per_case.assign(condition=_conditions(per_case))
    labels = sorted(frame[["fraction", "condition"]].drop_duplicates().itertuples(index=False))
    fig, axes = plt.subplots(1, len(STRUCTURES), figsize=(4.5 * len(STRUCTURES), 4), squeeze=False)
    for ax, structure in zip(axes[0], STRUCTURES):
        data = [frame[(frame.fraction == f) & (frame.condition == c)].groupby("patient")[f"dice_{structure}"]
                .mean().to_numpy() for f, c in labels]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(labels) + 1), [f"{c}\n@{f:g}" for f, c in labels], rotation=60, fontsize=7)
        ax.set_title(f"Dice {structure}")
        ax.grid(alpha=0.3, axis="y")
    return fig


def _timings(run: "Run") -> pd.DataFrame:
    rows = []
    for stage in STAGES[:-1]:  # the report's own manifest is written after it
        path = run.stage_dir(stage) / "manifest.json"
        if path.is_file():
            record = read_json(path)
            rows.append({"stage": stage, "wall time (s)": float(record.get("wall_s", 0.0)),
                         "key": record.get("key", "")})
    return pd.DataFrame(rows)


def _environment() -> dict[str, Any]:
    import monai
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
           "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "cpu cores": os.cpu_count(), "torch threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
    return env
