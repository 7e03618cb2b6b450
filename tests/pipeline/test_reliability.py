"""Issue 17, through the command line (separate processes, tiny phantom runs): no path escape, one run per run
directory, one clear line on a full disk or a wrong file, checks before work, outputs a lab group can read.

The lock needs separate processes: a training step waits for the test there, in a few lines of Python run before
`cmr-synth` itself (`cli(prelude=)`). The disk faults (a rename or a write failing as on a full disk or a read-only
folder) are patched into in-process runs of the same command, to keep the module fast.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.test_run import TINY

REPO = Path(__file__).resolve().parents[2]
FAST = [*TINY, "experiment.fractions=[1.0]", "experiment.arms=[real]", "experiment.generators=[]",
        "quality.enabled=false", "segmentation.steps=4", "segmentation.val_every=2"]
UNIT = Path("train_segmenters/f1/real/seed0")

# The run's segmenter waits, mid-stage, until the test creates CMR_TEST_GO (after saying so in CMR_TEST_HELD).
HOLD = """
import os, time
from pathlib import Path
import segmentation.train
_train = segmentation.train.train_segmenter
def _held(*args, **kwargs):
    Path(os.environ["CMR_TEST_HELD"]).touch()
    while not os.path.exists(os.environ["CMR_TEST_GO"]):
        time.sleep(0.05)
    return _train(*args, **kwargs)
segmentation.train.train_segmenter = _held
"""

def cli(args: list[str], *, prelude: str = "", env: dict | None = None, wait: bool = True, umask: int = 0o022,
        log: Path | None = None):
    """`cmr-synth ARGS` in a fresh process (after `prelude`); a Popen writing to `log` when not `wait`."""
    code = f"{prelude}\nimport sys\nfrom pipeline.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    cmd = [sys.executable, "-c", code, *args]
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(env or {}))
    kwargs = dict(env=environ, text=True, preexec_fn=lambda: os.umask(umask))
    if wait:
        return subprocess.run(cmd, capture_output=True, timeout=300, **kwargs)
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)


def run_args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    config = run_dir.parent / "defaults.yaml"
    config.write_text("{}\n")  # the built-in defaults, not the repository's profiles
    sets = [f"data.root={root}", *FAST, *extra]
    return ["run", str(config), "--run-dir", str(run_dir), *[arg for item in sets for arg in ("--set", item)]]


def start_held(root: Path, run_dir: Path, go: Path, log: Path, timeout: float = 120) -> subprocess.Popen:
    """A `cmr-synth run` in the background, returned once it waits mid-training for `go` to exist."""
    held = go.with_name(f"{go.name}.held")
    process = cli(run_args(root, run_dir), prelude=HOLD, wait=False, log=log,
                  env={"CMR_TEST_GO": str(go), "CMR_TEST_HELD": str(held)})
    t0 = time.monotonic()
    try:
        while not held.exists():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - t0 < timeout, "the run never reached its training step"
            time.sleep(0.05)
    except AssertionError:
        process.kill()
        raise
    return process


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one error line a failed command prints last (progress bars and log lines come before it)."""
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("error: ") == 1, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------ 1. path escape
def test_export_refuses_a_manifest_case_that_climbs_out_and_writes_nothing(tmp_path):
    from tests.synthesis.test_export_nnunet import synthesize
    from tests.synthesis.test_synthesize import RecordingGenerator, make_draws

    synth = tmp_path / "a" / "b" / "c" / "synth"
    synthesize(RecordingGenerator(), make_draws(2), synth)
    manifest = synth / "manifest.csv"
    lines = manifest.read_text().splitlines()
    lines[2] = "../../../ESCAPED" + lines[2][lines[2].index(","):]
    manifest.write_text("\n".join(lines) + "\n")
    before = files(tmp_path)
    done = cli(["export-nnunet", str(synth), str(tmp_path / "a" / "b" / "c" / "raw"), "--dataset-id", "3",
                "--name", "Escape"])
    assert error_line(done) == (f"error: {manifest}: line 3: case '../../../ESCAPED' points outside {synth}; "
                                f"expected a plain file name")
    assert files(tmp_path) == before  # no ESCAPED_ED*.nii.gz three folders up, no output folder either


# --------------------------------------------------------------------------------------- 2. run-dir lock
@pytest.fixture(scope="module")
def held_run(phantom_root, tmp_path_factory) -> dict:
    """A run (umask 022) held mid-training while a second run on the same folder is tried, then let finish."""
    base = tmp_path_factory.mktemp("held")
    run_dir, go, log = base / "run", base / "go", base / "first.log"
    first = start_held(phantom_root, run_dir, go, log)
    try:
        holder = json.loads((run_dir / ".lock").read_text())
        second = cli(run_args(phantom_root, run_dir))
        still_running = first.poll() is None
        go.touch()
        first_rc = first.wait(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    return {"run_dir": run_dir, "first": first, "holder": holder, "second": second, "still_running": still_running,
            "first_rc": first_rc, "log": log.read_text()}


def test_a_second_run_on_the_same_run_dir_is_refused_while_the_first_finishes(held_run):
    run_dir, first = held_run["run_dir"], held_run["first"]
    assert held_run["still_running"]  # refused while the first was mid-training, not after it
    assert error_line(held_run["second"]) == (
        f"error: run directory {run_dir} is in use by another cmr-synth run (pid {first.pid} on "
        f"{socket.gethostname()}, started {held_run['holder']['started']}); wait for it to end or choose another "
        f"--run-dir")
    assert held_run["first_rc"] == 0, held_run["log"][-3000:]
    assert (run_dir / "report" / "report.html").is_file()
    assert not (run_dir / ".lock").exists()  # released at exit
    assert (run_dir / "run.log").read_text().count("cmr-synth run:") == 1  # the refused run wrote nothing


def test_outputs_honour_the_umask(held_run):
    """Under umask 022 every output is 0644 and every folder 0755, so a lab group can read them (mkstemp alone
    made every file 0600)."""
    modes = {str(p.relative_to(held_run["run_dir"])): oct(p.stat().st_mode & 0o777)
             for p in held_run["run_dir"].rglob("*")}
    expected = {name: oct(0o755) if (held_run["run_dir"] / name).is_dir() else oct(0o644) for name in modes}
    assert modes == expected and any(name.endswith("best.pt") for name in modes)


def test_a_killed_runs_lock_and_a_foreign_checkpoint_do_not_block_the_next_run(phantom_root, tmp_path):
    """Killed mid-training, with a checkpoint of another run in its unit folder (what two runs at once left
    before the lock): the next run takes the lock over with a warning, starts the unit over and finishes."""
    from segmentation.model import build_model, save_checkpoint
    from tests.segmentation.cases import tiny_config

    run_dir = tmp_path / "run"
    first = start_held(phantom_root, run_dir, tmp_path / "go", tmp_path / "first.log")  # no go: held for good
    try:
        holder = json.loads((run_dir / ".lock").read_text())
    finally:
        first.kill()
        first.wait()
    assert (run_dir / ".lock").exists() and (run_dir / UNIT / ".started").exists()
    cfg = tiny_config()
    save_checkpoint(run_dir / UNIT / "last.pt", model=build_model(cfg), cfg=cfg, step=2, arm="real", seed=7)

    done = cli([*run_args(phantom_root, run_dir), "--stages", "prepare,train_segmenters"])
    assert done.returncode == 0, done.stderr[-3000:]
    notice = (f"run directory {run_dir}: taking over the lock left by a run that is gone (pid {first.pid} on "
              f"{socket.gethostname()}, started {holder['started']})")
    assert notice in done.stderr and notice in (run_dir / "run.log").read_text()
    assert f"{run_dir / UNIT / 'last.pt'} belongs to another run" in done.stderr
    assert f"starting {run_dir / UNIT} over" in done.stderr
    assert json.loads((run_dir / UNIT / "done.json").read_text())["result"]["steps"] == 4
    assert not (run_dir / ".lock").exists()


# ------------------------------------------------------------------------------- 3. full disk, no permission
APPEND_ONLY = ("run.log", "metrics.csv")  # logs a failed run may have added lines to, never rewritten


def inject(monkeypatch, kind: str, at: str, code: int, run_dir: Path) -> dict[str, list]:
    """Make one write fail: `kind` replace (the rename publishing the file ending in `at`), full (that file's
    bytes go to /dev/full, a device that is always full: a real ENOSPC from torch's writer) or mkstemp (no temp
    file in the folder ending in `at`: a read-only folder). Just before, every file of the run is recorded
    (name -> size, sha256), the one being written excepted; the record is returned (filled when it fails)."""
    import builtins
    import tempfile

    import data.io

    snapshot: dict[str, list] = {}

    def record(busy: Path | None = None) -> None:
        snapshot.update({str(p.relative_to(run_dir)): [p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()]
                         for p in run_dir.rglob("*") if p.is_file() and p != busy and p.name != ".lock"})

    if kind == "replace":
        def replace(src, dst, *args, real=os.replace, **kwargs):
            if str(dst).endswith(at):
                record(Path(src))
                raise OSError(code, os.strerror(code))
            return real(src, dst, *args, **kwargs)
        monkeypatch.setattr(os, "replace", replace)
    elif kind == "full":
        def open_(file, mode="r", *args, **kwargs):
            if "w" in mode and Path(file).name.startswith(f".{at}."):
                record(Path(file))
                file = "/dev/full"
            return builtins.open(file, mode, *args, **kwargs)
        monkeypatch.setattr(data.io, "open", open_, raising=False)
    else:
        def mkstemp(*args, dir=None, real=tempfile.mkstemp, **kwargs):
            if str(dir).endswith(at):
                record()
                raise PermissionError(code, os.strerror(code), dir)
            return real(*args, dir=dir, **kwargs)
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return snapshot


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_or_a_read_only_folder_is_one_line_and_earlier_outputs_stay_intact(phantom_root, tmp_path,
                                                                                       monkeypatch, capsys):
    """In-process `cmr-synth run` (the faults are patched in; a process each would double the test's time)."""
    import errno

    from pipeline.cli import main

    run_dir = tmp_path / "run"
    faults = [  # in run order; each run resumes what the previous one left
        ("replace", "splits.json", errno.ENOSPC, "prepare/splits.json", "no space left on device"),
        ("full", "last.pt", errno.ENOSPC, f"{UNIT}/last.pt", "no space left on device"),
        ("replace", "per_case.csv", errno.EROFS, "evaluate/f1/real/seed0/per_case.csv", "read-only file system"),
        ("mkstemp", "report", errno.EACCES, "report/report.html", "permission denied"),
    ]
    for kind, at, code, path, cause in faults:
        with monkeypatch.context() as patch:
            snapshot = inject(patch, kind, at, code, run_dir)
            assert main(run_args(phantom_root, run_dir)) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1] == f"error: cannot write {run_dir / path}: {cause}", err[-3000:]
        assert err.count("error: ") == 1 and "Traceback" not in err and snapshot
        after = {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        assert not [name for name in after if Path(name).name.startswith(".") and Path(name).name != ".started"]
        for name, (size, digest) in snapshot.items():  # every earlier output byte-identical (logs: extended)
            assert hashlib.sha256(after[name][:size]).hexdigest() == digest, name
            assert len(after[name]) == size or Path(name).name in APPEND_ONLY, name
    assert main(run_args(phantom_root, run_dir)) == 0  # space freed: the run resumes and finishes
    assert (run_dir / "report" / "report.html").is_file()


# ------------------------------------------------------------------------------------ 4. wrong checkpoint
def test_segment_with_a_generator_training_checkpoint_is_one_line(phantom_root, tmp_path):
    """The issue's case: it used to crash with 'ValueError: segmentation.strides: expected 2 values'."""
    from synthesis.base import build_generator
    from tests.synthesis.test_generators import tiny_config, toy_pairs

    masks, images = toy_pairs(n=4)
    build_generator("cvae", tiny_config("cvae", steps=1, checkpoint_every=1, sample_every=1)).fit(
        masks, images, tmp_path / "cvae")
    checkpoint = tmp_path / "cvae" / "checkpoint.pt"
    done = cli(["segment", "--checkpoint", str(checkpoint), "--input", str(phantom_root / "patient001"),
                "--output", str(tmp_path / "out")])
    assert error_line(done) == (f"error: not a cmr-synth segmentation checkpoint: {checkpoint} (it is a 'cvae' "
                                f"generator's training checkpoint)")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- 5. checks before work
@pytest.mark.parametrize("extra, expected, written", [
    (["data.split.n_test=20"], "error: --set data.split.n_test=20: data.split.n_test = 20 test + data.split.n_val "
     "= 1 validation + 1 training patient need 22 patients, but only 6 were found in {root}; lower "
     "data.split.n_test or data.split.n_val", {"run.log"}),
    (["data.root=", "data.phantom_patients=12", "data.split.n_test=20"], "error: --set data.split.n_test=20: "
     "data.split.n_test = 20 test + data.split.n_val = 1 validation + 1 training patient need 22 patients, but "
     "only 12 were found in the phantom (data.phantom_patients); lower data.split.n_test or data.split.n_val",
     {"run.log"}),
    (["data.label_map={1: 7}"], "error: --set data.label_map={1: 7}: data.label_map[1] = 7: expected an internal "
     "label, one of 0 (background), 1 (RV), 2 (MYO), 3 (LV)", None),
])
def test_split_sizes_and_label_maps_are_refused_before_any_stage(phantom_root, tmp_path, capsys, extra, expected,
                                                                 written):
    """In-process (the checks come before any work, so a process of its own would only add start-up time)."""
    from pipeline.cli import main

    run_dir = tmp_path / "run"
    assert main(run_args(phantom_root, run_dir, *extra)) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == expected.replace("{root}", str(phantom_root)) and "Traceback" not in err
    assert (files(run_dir) if run_dir.exists() else None) == written  # no stage folder, no phantom
