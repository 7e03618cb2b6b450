"""Console + run.log logging for a run; tqdm bars write through the same console without tearing."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

LOGGER_NAME = "cmr_synth"


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never break a run
            self.handleError(record)


class _RunLog(logging.FileHandler):
    """run.log. A line that cannot be written (a full disk) is dropped rather than printed as a logging
    traceback: the next output the run writes fails with one line naming the problem."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


class _WarningFilter(logging.Filter):
    """Python warnings arrive as 'file:line: Category: message\n  source'; keep 'Category: message'.
    Empty slices beyond base and apex are normal: they go to run.log only, not the console."""

    def __init__(self, console: bool):
        super().__init__()
        self.console = console

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.getMessage()).strip().splitlines()[0]
        match = re.match(r"^.*?:\d+: (\w+: .*)$", text)
        record.msg, record.args = (match.group(1) if match else text), ()
        return not (self.console and "slices without labels" in record.msg)


def setup_logging(run_dir: Path, level: int = logging.INFO, *, rank: int = 0) -> logging.Logger:
    """Log to the console and append to RUN_DIR/run.log (a resumed run continues the same file).

    Under torchrun only rank 0 logs like this; the other processes print their warnings and errors only,
    prefixed with their rank, and never touch run.log."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if rank != 0:
        console = _TqdmHandler()
        console.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(message)s"))
        logger.addHandler(console)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        return logger
    run_dir.mkdir(parents=True, exist_ok=True)
    file_handler = _RunLog(run_dir / "run.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(file_handler)
    logger.addHandler(console)
    logger.propagate = False
    # data warnings (empty slices, crops cutting the heart) belong in run.log too
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    for handler in list(warnings_logger.handlers):
        warnings_logger.removeHandler(handler)
    for handler, on_console in ((_RunLog(run_dir / "run.log"), False), (_TqdmHandler(), True)):
        handler.setFormatter(logging.Formatter("%(asctime)s WARNING %(message)s" if not on_console
                                               else "warning: %(message)s"))
        handler.addFilter(_WarningFilter(console=on_console))
        warnings_logger.addHandler(handler)
    warnings_logger.propagate = False
    return logger


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
