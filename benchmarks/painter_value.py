"""Does a painter's quality row say what its synthetic data add to a segmenter? Every synthetic arm measured on
ACDC (10 training patients x 5 draws, strong augmentation, test patients scored once; the committed tables in
benchmarks/results/) next to its generator's quality row, per draw: consistency gap, Fréchet distance over the
real images' own, heart diversity; and its test Dice (mean over the 30 test patients) minus `warp` [strong]'s
(the best augmentation-only arm) and `real` [strong]'s on the same draw.

    python -m benchmarks.painter_value [--out painter_value.csv]

Reads committed tables only (no data set, no training): seconds.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = ("acdc_lowdata_5draws", "acdc_filter", "acdc_learned", "acdc_diffusion", "acdc_diffusion_3k")
# each synthetic arm's generator label in the per-case tables -> the quality table of the generator it used
QUALITY = {
    "gmm": "acdc_filter/quality_gmm.csv",
    "gmm_share0.2": "acdc_filter/quality_gmm.csv",
    "gmm_share0.2_filter0.25": "acdc_filter/quality_gmm.csv",
    "spade_inpaint": "acdc_learned/quality_spade_inpaint.csv",
    "spade_inpaint_ms": "acdc_learned/quality_spade_inpaint_ms.csv",
    "spade_inpaint_ms_share0.2": "acdc_learned/quality_spade_inpaint_ms.csv",
    "spade_inpaint_ms_share0.2_filter0.25": "acdc_learned/quality_spade_inpaint_ms.csv",
    "diffusion_inpaint_w96_share0.2_filter0.25": "acdc_diffusion/quality_diffusion.csv",
    "diffusion_3k_inpaint_w96_share0.2_filter0.25": "acdc_diffusion_3k/quality_diffusion_3k.csv",
}
MEASURES = {"consistency_gap": "gap (points)", "fd_ratio": "FD / real FD", "diversity_heart_ratio": "heart diversity"}


def draw_means(results: Path = RESULTS) -> pd.DataFrame:
    """Test mean Dice (points) per draw (rows) and [strong] arm (columns, `real` for the real arm)."""
    per_case = pd.concat([pd.read_csv(results / run / "per_case.csv.gz") for run in RUNS], ignore_index=True)
    per_case = per_case[per_case["augmentation"] == "strong"].assign(
        generator=lambda f: f["generator"].fillna("real"))
    return per_case.groupby(["draw", "generator"])["dice_mean"].mean().mul(100).unstack("generator")


def painter_table(results: Path = RESULTS) -> pd.DataFrame:
    """One row per synthetic arm and draw: its generator's quality and its test gain over the references."""
    means, rows = draw_means(results), []
    for arm, table in QUALITY.items():
        quality = pd.read_csv(results / table)
        real = quality[quality["generator"] == "real"].set_index("draw")
        painted = quality[quality["generator"] != "real"].set_index("draw")
        for draw in means.index:
            rows.append({"arm": arm, "draw": draw,
                         "consistency_gap": 100 * painted.loc[draw, "consistency_gap"],
                         "fd_ratio": painted.loc[draw, "fd"] / real.loc[draw, "fd"],
                         "diversity_heart_ratio": painted.loc[draw, "diversity_heart_ratio"],
                         "vs_warp": means.loc[draw, arm] - means.loc[draw, "warp"],
                         "vs_real": means.loc[draw, arm] - means.loc[draw, "real"]})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the per-arm-and-draw table here (CSV)")
    args = ap.parse_args()
    table = painter_table()
    summary = table.groupby("arm", sort=False)[[*MEASURES, "vs_warp", "vs_real"]].mean()
    print(summary.rename(columns=MEASURES).round(2).to_string())
    print(f"\n{len(table)} arm x draw pairs; above warp [strong]: {(table['vs_warp'] > 0).sum()} "
          f"(largest {table['vs_warp'].max():+.2f} points)")
    for measure, label in MEASURES.items():
        print(f"Pearson r, {label} vs gain over warp: per arm x draw {table[measure].corr(table['vs_warp']):+.2f}, "
              f"over arm means {summary[measure].corr(summary['vs_warp']):+.2f}")
    # the least-squares line through the arms' means: where a more varied painter would land
    slope, at_zero = np.polyfit(summary["diversity_heart_ratio"], summary["vs_warp"], 1)
    print(f"Line over arm means: {slope:+.1f} points per unit of heart diversity; at diversity 1.0 "
          f"{at_zero + slope:+.1f} vs warp [strong]; +2 points would need {(2 - at_zero) / slope:.1f}")
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
