"""`cmr-synth run`: the whole experiment from one YAML, cached and resumable."""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

from pipeline.run import STAGES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run (or resume) the experiment described by a YAML config")
    p.add_argument("config", nargs="?", type=Path, default=Path("pipeline.yaml"),
                   help="pipeline YAML (default: ./pipeline.yaml)")
    p.add_argument("--profile", default=None, help="profile of the YAML to apply (e.g. quick, full)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set segmentation.steps=500 (repeatable)")
    p.add_argument("--stages", default=None,
                   help=f"comma-separated stages to run up to, from {','.join(STAGES)}")
    p.add_argument("--force", action="append", default=[], choices=STAGES, metavar="STAGE",
                   help="re-run this stage even if it is up to date (repeatable)")
    p.add_argument("--run-dir", type=Path, default=None, help="where outputs go (overrides run_dir)")
    p.add_argument("--unseal", action="store_true",
                   help="score the sealed test set (evaluate.sealed: true) once; recorded in RUN_DIR/unsealed.json")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pipeline.config import blame, load_config
    from pipeline.errors import ConfigError
    from pipeline.lock import HELD_ENV, LOCK_NAME, RunLock
    from pipeline.logs import get_logger, setup_logging
    from pipeline.run import run_pipeline

    overrides = list(args.overrides) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
    cfg = load_config(args.config, profile=args.profile, overrides=overrides)
    stages = None
    if args.stages:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise SystemExit(f"--stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    rank = int(os.environ.get("RANK", "0"))
    # One run per run directory: this process holds the lock unless it is one of the torchrun processes that
    # a holding parent started (HELD_ENV) or, under a torchrun started by hand, not rank 0.
    held_above = os.environ.get(HELD_ENV) == str(Path(cfg.run_dir) / LOCK_NAME) or rank != 0
    with RunLock(cfg.run_dir) if not held_above else nullcontext() as lock:
        notice = lock.notice() if lock is not None else None
        if cfg.launch.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
            if notice:
                get_logger().warning(notice)
            return launch_torchrun(cfg.launch.nproc_per_node, args.argv, lock=lock)
        log = setup_logging(Path(cfg.run_dir), rank=rank)
        if notice:
            log.warning(notice)
        log.info(f"cmr-synth run: config {args.config}, profile {cfg.profile}, run dir {cfg.run_dir}")
        try:
            run = run_pipeline(cfg, stages=stages, force=tuple(args.force), unseal=args.unseal)
        except ConfigError as exc:  # the data disagrees with the config (e.g. too few patients for the split)
            raise blame(exc, str(args.config), overrides) from None
    report = Path(cfg.run_dir) / "report" / "report.html"
    if report.is_file() and run.ctx.is_main:
        from pipeline.report import headline_table

        print(headline_table(run))
        print(f"\nreport: {report.resolve()}")
    return 0


def launch_torchrun(nproc: int, argv: list[str], lock=None) -> int:
    """Start the same command under `torchrun --standalone` with `nproc` processes on this machine; they run
    under this process's run-directory `lock` (its fd is not inherited: they are told in the environment)."""
    from pipeline.lock import HELD_ENV

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "pipeline", *argv]
    print(f"launch.nproc_per_node = {nproc}: {shlex.join(cmd)}", flush=True)
    env = dict(os.environ, **({HELD_ENV: str(lock.path)} if lock is not None else {}))
    return subprocess.call(cmd, env=env)
