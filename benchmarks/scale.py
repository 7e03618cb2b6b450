"""Cohort scale: wall time and peak memory of preparation, U-Net training and evaluation against the number of
patients, with the memory-mapped slice store (`data.cache`).

    OMP_NUM_THREADS=1 python -m benchmarks.scale --patients 100 500 2000 --steps 50 --workers 8 --out scale.json
    OMP_NUM_THREADS=1 python -m benchmarks.scale --patients 20 40 --steps 5 --size 96   # a quick check

Each size uses the first N patients of one phantom cohort (`data.phantom.write_patient`: patient i is the same
in every cohort), written once under `--dir` (default runs/bench_scale/phantom, grown to the largest size asked
for, in `--workers` processes) and kept between calls. Per size, four stages run, each in a fresh Python process
so that one stage's peak does not hide the next one's:

- `prepare`: the slice store of the N patients built from scratch (`prepare_cases`, `--workers` processes; the
  store under `--dir`/nN/store is deleted first);
- `reload`: the same call again, all hits (content hashes + memory-mapping every case): what every later stage
  pays to open the cohort;
- `train`: `train_segmenter` (real arm, default U-Net, `--steps` steps of `--batch` slices, validated once at the
  end) on the training patients; the split is the last 10 % of patients (at least 2) for testing, the 2 before
  them for validation, the rest for training;
- `evaluate`: `evaluate_cases` (3D Dice, HD95, volumes on the original grid; no prediction files) of the test
  patients with the trained network, in `--workers` processes.

`seconds` is the stage itself (imports excluded), `process_s` the whole process. `peak_rss_mb` is the stage
process's peak resident set (`getrusage` maxrss), `stage_rss_mb` what the stage adds over the process after its
imports, `workers_peak_rss_mb` the largest of its worker processes (preparation pool, loader workers).
Memory-mapped pages that a process reads count in its RSS while mapped, although they are page cache (shared
between processes, dropped under memory pressure): `rss_anon_mb` / `rss_file_mb` split the RSS at the end of
the stage into the process's own memory and such file pages (Linux only). The `per_patient` columns divide by N.
"""
from __future__ import annotations

import argparse
import functools
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import parser, peak_rss_mb, report, setup, synchronize

STAGES = ("prepare", "reload", "train", "evaluate")
SEED = 0  # of the phantom cohort


# ---------------------------------------------------------------------------------------------- cohort
def patient_id(i: int) -> str:
    return f"patient{i + 1:03d}"  # as data.phantom.write_patient names patient i


def ensure_cohort(root: Path, n: int, workers: int) -> None:
    """Phantom patients 0..n-1 under `root`; those already complete (Info.cfg is written last) are kept."""
    from data.parallel import process_map
    from data.phantom import write_patient

    missing = [i for i in range(n) if not (root / patient_id(i) / "Info.cfg").is_file()]
    if not missing:
        return
    print(f"phantom: writing {len(missing)} of {n} patients into {root} ({workers} processes)", flush=True)
    start = time.perf_counter()
    process_map(functools.partial(write_patient, root, seed=SEED), missing, workers)
    print(f"phantom: {time.perf_counter() - start:.0f} s", flush=True)


def split_refs(root: Path, n: int) -> dict[str, list]:
    """The cases of the first n patients: all of them, and the train / val / test split of the module docstring."""
    from data.layouts import list_cases

    wanted = {patient_id(i): i for i in range(n)}
    refs = sorted((r for r in list_cases(root, "acdc") if r.patient_id in wanted),
                  key=lambda r: (wanted[r.patient_id], r.phase))
    n_test = max(2, -(-n // 10))
    test = {patient_id(i) for i in range(n - n_test, n)}
    val = {patient_id(i) for i in range(n - n_test - 2, n - n_test)}
    return {"all": refs, "test": [r for r in refs if r.patient_id in test],
            "val": [r for r in refs if r.patient_id in val],
            "train": [r for r in refs if r.patient_id not in test | val]}


# ---------------------------------------------------------------------------------------------- stages
def run_stage(stage: str, args: argparse.Namespace) -> dict:
    """One stage for the first `args.n` patients, in this (fresh) process; its figures as a dict."""
    from data.cache import prepare_cases
    from data.config import PreprocessConfig
    from segmentation.config import SegmentationConfig
    from segmentation.evaluate import evaluate_cases
    from segmentation.model import load_model
    from segmentation.train import train_segmenter

    device = setup(args)
    work = args.dir / f"n{args.n}"
    refs = split_refs(args.dir / "phantom", args.n)
    preprocess = PreprocessConfig(target_spacing=1.5, crop_size=args.size)
    store = work / "store"

    def load(part: str, role: str = "train") -> list:
        return prepare_cases(refs[part], preprocess, store, role=role, workers=args.workers)

    baseline = peak_rss_mb()
    start = time.perf_counter()
    extra: dict = {}
    if stage == "prepare":
        shutil.rmtree(store, ignore_errors=True)
        cases = load("all")
        extra = {"cases": len(cases), "slices": sum(len(c.image) for c in cases),
                 "store_mb": sum(f.stat().st_size for f in store.rglob("*.npy")) / 2**20}
    elif stage == "reload":
        extra = {"cases": len(load("all"))}
    elif stage == "train":
        out = work / "train"
        shutil.rmtree(out, ignore_errors=True)  # otherwise train_segmenter resumes from last.pt
        cfg = SegmentationConfig(batch_size=args.batch, steps=args.steps, val_every=args.steps, device=device.type)
        train_cases, val_cases = load("train"), load("val", role="val")
        result = train_segmenter("real", train_cases, val_cases, cfg, out, progress=False)
        extra = {"cases": len(train_cases), "slices": sum(len(c.image) for c in train_cases),
                 "samples_per_s": result.samples_per_s, "val_dice": result.best_val_dice}
    elif stage == "evaluate":
        model, _ = load_model(work / "train" / "best.pt", device)
        test_cases = load("test", role="test")
        per_case = evaluate_cases(model, test_cases, None, arm="real", fraction=1.0, seed=0, save_predictions=False,
                                  batch_size=args.batch, workers=args.workers)
        extra = {"cases": len(test_cases), "dice_mean": float(per_case["dice_mean"].mean())}
    synchronize(device)
    seconds = time.perf_counter() - start
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"patients": args.n, "stage": stage, "seconds": seconds, "baseline_rss_mb": baseline,
            "peak_rss_mb": peak_rss_mb(), "stage_rss_mb": peak_rss_mb() - baseline,
            "workers_peak_rss_mb": (workers / 1024 if sys.platform != "darwin" else workers / 2**20) or None,
            **rss_split(), **extra}


def rss_split() -> dict:
    """RSS now, split into anonymous memory and file pages (memory-mapped store, libraries); Linux only."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {"rss_anon_mb": int(fields["RssAnon"].split()[0]) / 1024,
                "rss_file_mb": int(fields["RssFile"].split()[0]) / 1024}
    except (OSError, KeyError, ValueError):
        return {"rss_anon_mb": None, "rss_file_mb": None}


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, size=128, batch=16, steps=50, repeats=1)
    p.add_argument("--patients", type=int, nargs="+", default=[100, 500, 2000], help="cohort sizes")
    p.add_argument("--workers", type=int, default=1,
                   help="processes of the preparation, the evaluation and the phantom writing")
    p.add_argument("--dir", type=Path, default=Path("runs/bench_scale"), help="cohort, stores and checkpoints")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_stage(args.child, args)))
        return 0
    if min(args.patients) < 5:
        p.error("--patients: at least 5 per cohort (2 validation and 2 test patients, the rest for training)")
    if "evaluate" in args.stages and "train" not in args.stages and not all(
            (args.dir / f"n{n}" / "train" / "best.pt").is_file() for n in args.patients):
        p.error("--stages evaluate needs the train stage (or a best.pt from an earlier call) for every size")
    device = setup(args)
    ensure_cohort(args.dir / "phantom", max(args.patients), args.workers)
    rows = []
    for n in args.patients:
        for stage in args.stages:
            cmd = [sys.executable, "-m", "benchmarks.scale", "--child", stage, "--n", str(n), "--dir", str(args.dir),
                   "--workers", str(args.workers), "--device", args.device, "--size", str(args.size),
                   "--batch", str(args.batch), "--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"stage {stage} with {n} patients failed (exit {done.returncode}): {' '.join(cmd)}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["process_s"] = time.perf_counter() - start
            row["s_per_patient"] = row["seconds"] / n
            row["rss_mb_per_patient"] = row["stage_rss_mb"] / n
            rows.append(row)
            print(f"{n} patients, {stage}: {row['seconds']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB "
                  f"(+{row['stage_rss_mb']:.0f} MB)", flush=True)
    report("scale", args, device, rows, columns=["patients", "stage", "seconds", "s_per_patient", "process_s",
                                                 "peak_rss_mb", "stage_rss_mb", "rss_mb_per_patient",
                                                 "workers_peak_rss_mb", "rss_anon_mb", "rss_file_mb"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
