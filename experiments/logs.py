"""Where the scripts' log records go: the console shows warnings and errors; every INFO record goes to a file.

The console keeps what a person reads — the progress bar, the evaluation tables, warnings, errors — and the
libraries' INFO records (absl, orbax, grain, tfds, jax: checkpoint saves, metadata, data-set info) go to
`WORKDIR/log.txt` (appended, one timestamped line per record; `log.process<i>.txt` for process i > 0 of a
multi-host run). `--log_level=info` shows them on the console too; absl's `-v=1` lets DEBUG records into the file.

A script calls `quiet_console()` first (before anything logs), then `log_to_file(workdir)` once it knows its work
directory and process index; records logged in between are kept and written to the file then. `setup(workdir)`
does both for a single-process script.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import shlex
import sys

from absl import flags
from absl import logging as absl_logging

LOG_LEVEL = flags.DEFINE_enum("log_level", "warning", ["debug", "info", "warning", "error"],
                              "Lowest level of log records shown on the console. Records from INFO up always go to "
                              "WORKDIR/log.txt.")

FORMAT = "%(asctime)s.%(msecs)03d %(levelname).1s %(process)d %(name)s %(filename)s:%(lineno)d] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_FILE_HANDLER = "jaxdet-log-file"
_BUFFER = "jaxdet-log-buffer"


def _console_handlers() -> list[logging.Handler]:
  """Returns the root handlers that write to the terminal: absl's (under `app.run`) or plain stderr streams."""
  handlers = []
  for handler in logging.getLogger().handlers:
    if handler is absl_logging.get_absl_handler():
      handlers.append(handler)
    elif isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
      handlers.append(handler)
  return handlers


def _named(name: str) -> logging.Handler | None:
  return next((h for h in logging.getLogger().handlers if h.get_name() == name), None)


def quiet_console(level: str | None = None) -> None:
  """Shows only records at `level` (default `--log_level`) and above on the console; buffers the rest for the file."""
  level = getattr(logging, (level or LOG_LEVEL.value).upper())
  root = logging.getLogger()
  for handler in _console_handlers():
    handler.setLevel(level)
  if level < root.getEffectiveLevel():
    root.setLevel(level)
  if _named(_BUFFER) is None and _named(_FILE_HANDLER) is None:
    # Keeps what is logged before the work directory is known (e.g. jax.distributed's start-up) for log_to_file.
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
    buffer.set_name(_BUFFER)
    root.addHandler(buffer)


def log_to_file(directory: str | os.PathLike[str], *, process_index: int = 0) -> str:
  """Returns the path of the log file in `directory` that every log record is appended to from now on."""
  os.makedirs(directory, exist_ok=True)
  name = "log.txt" if process_index == 0 else f"log.process{process_index}.txt"
  path = os.path.join(os.fspath(directory), name)
  root = logging.getLogger()
  old = _named(_FILE_HANDLER)
  if old is not None:  # a second call in one process (tests, the zoo) moves the file
    root.removeHandler(old)
    old.close()
  handler = logging.FileHandler(path, mode="a", encoding="utf-8")
  handler.set_name(_FILE_HANDLER)
  handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
  handler.setLevel(logging.NOTSET)
  root.addHandler(handler)
  if root.getEffectiveLevel() > logging.INFO:
    root.setLevel(logging.INFO)
  buffer = _named(_BUFFER)
  if buffer is not None:
    root.removeHandler(buffer)
    for record in buffer.buffer:
      if record.levelno >= root.getEffectiveLevel():
        handler.handle(record)
    buffer.close()
  logging.getLogger("jaxdet").info("started: %s", " ".join(shlex.quote(a) for a in sys.argv))
  return path


def setup(directory: str | os.PathLike[str]) -> str:
  """Returns the log file's path, after `quiet_console()` and `log_to_file(directory)` (single-process scripts)."""
  quiet_console()
  return log_to_file(directory)
