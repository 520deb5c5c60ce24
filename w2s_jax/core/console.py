"""What reaches the console, and the log file that gets the rest.

`setup(workdir)` runs once, right after flags are parsed. From then on:

* stdout carries the program's own progress lines (`progress.log`);
* stderr shows Python `logging` records at WARNING and above, one short line
  each: ``warning: <logger>: <message>``. A library warning that keeps
  repeating (say huggingface_hub's "Retrying in 8s" on a machine without the
  hub) is shown once, then once more marked as repeated; later repeats go to
  the log file only. Our own (`w2s_jax.*`) warnings and all errors always
  show;
* every record at INFO and above, from every library (absl and orbax, jax,
  datasets, huggingface_hub, transformers, urllib3/httpx...) and from Python's
  `warnings` module, goes to ``<workdir>/logs/run-<UTC time>-<pid>.log``.
  Each process of a multi-host run writes its own file. With
  ``defer_file=True`` (what `python -m w2s_jax.main` uses) the records wait
  in memory until `open_log_file()`, which the run calls once its checks
  have passed: a run refused by its checks leaves nothing in the workdir.

absl's ``-v/--verbosity`` flag sets the console level: left out, WARNING;
``--verbosity=0`` (or ``-v 0``) brings the INFO lines back to the console,
``--verbosity=1`` adds DEBUG (to the file too), ``--verbosity=-2`` shows
errors only. absl's own stderr handler (installed by `app.run`) is removed,
so absl's ``--logtostderr``/``--stderrthreshold``/``--log_dir`` do nothing.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import time

from w2s_jax.core.progress import log as progress_log

# Libraries that attach their own stderr handler (and may stop propagation or
# raise their level to WARNING): their records are routed through the root
# logger instead, so they reach the file and the console filter like any other.
_LIBRARY_LOGGERS = ("datasets", "huggingface_hub", "transformers",
                    "jax", "orbax", "absl")
# These attach that handler in `<name>.utils.logging`, which may be imported
# only after setup (transformers is, lazily): they are fixed on import.
_HANDLER_LIBRARIES = ("datasets", "huggingface_hub", "transformers")

_installed: list[logging.Handler] = []
# Records a deferred log file holds in memory at most before it is opened.
_MAX_PENDING = 100_000


def _short_level(levelno: int) -> str:
    return logging.getLevelName(levelno).lower().replace("critical", "error")


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().rstrip()
        line = f"{_short_level(record.levelno)}: {record.name}: {message}"
        note = getattr(record, "w2s_repeat_note", None)
        if note:
            line += f" (repeated; further repeats only in {note})"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RepeatFilter(logging.Filter):
    """Hides a library warning's third and later repeats from the console.

    Repeats are matched by logger, level and message with numbers blanked, so
    "Retrying in 1s" and "Retrying in 8s" count as the same warning.
    """

    def __init__(self, log_path: str, own_prefix: str = "w2s_jax"):
        super().__init__()
        self.log_path, self.own_prefix = log_path, own_prefix
        self.seen: dict[tuple, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno >= logging.ERROR or record.levelno < logging.WARNING
                or record.name == self.own_prefix
                or record.name.startswith(self.own_prefix + ".")):
            return True
        message = re.sub(r"\d+(\.\d+)?", "#", str(record.msg))
        key = (record.name, record.levelno, message)
        count = self.seen[key] = self.seen.get(key, 0) + 1
        if count == 2:
            record.w2s_repeat_note = self.log_path
        return count <= 2


class LogFileHandler(logging.Handler):
    """Writes formatted records to `path`; until `open()` they are kept in
    memory (formatted at once, so later changes to their arguments do not
    show), and the file and its directory do not exist."""

    def __init__(self, path: str):
        super().__init__()
        self.path, self.stream, self.pending, self.dropped = path, None, [], 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if self.stream is not None:
                self.stream.write(line)
                self.stream.flush()
            elif len(self.pending) < _MAX_PENDING:
                self.pending.append(line)
            else:
                self.dropped += 1
        except Exception:  # logging must never raise into the program
            self.handleError(record)

    def open(self) -> bool:
        """Creates the file and writes what waited; False if already open."""
        if self.stream is not None:
            return False
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.acquire()
        try:
            self.stream = open(self.path, "a", encoding="utf-8")
            self.stream.writelines(self.pending)
            if self.dropped:
                self.stream.write(f"[{self.dropped} later records before the "
                                  f"file was opened were dropped]\n")
            self.stream.flush()
            self.pending, self.dropped = [], 0
        finally:
            self.release()
        return True

    def close(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
                self.stream = None
            self.pending = []
        finally:
            self.release()
        super().close()


def _prints(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and getattr(
        handler, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__,
                                     sys.__stdout__)


def _adopt(name: str, reset_level: bool = True) -> None:
    """Route logger `name` through the root logger's handlers only."""
    logger = logging.getLogger(name)
    printing = [h for h in logger.handlers if _prints(h)]
    for handler in printing:
        logger.removeHandler(handler)
    if printing or reset_level:
        logger.propagate = True
    if reset_level:
        logger.setLevel(logging.NOTSET)


def _adopt_library(module) -> None:
    """Hook for `<library>.utils.logging`, right after it is imported."""
    library = module.__name__.split(".")[0]
    if hasattr(module, "disable_default_handler"):
        module.disable_default_handler()  # transformers adds it lazily
    _adopt(library)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `hook(module)` right after the named module is first imported."""

    def __init__(self, name: str, hook):
        self.name, self.hook = name, hook

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot; also avoids finding ourselves
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(
                spec.loader, "exec_module"):
            return spec
        exec_module, hook = spec.loader.exec_module, self.hook

        def exec_and_hook(module):
            exec_module(module)
            hook(module)

        spec.loader.exec_module = exec_and_hook
        return spec


def console_level(verbosity: int | None) -> int:
    """absl verbosity (None: flag not given) -> console logging level."""
    if verbosity is None:
        return logging.WARNING
    if verbosity >= 1:
        return logging.DEBUG - (verbosity - 1)
    return {0: logging.INFO, -1: logging.WARNING, -2: logging.ERROR}.get(
        verbosity, logging.CRITICAL)


def _verbosity_from_flags() -> int | None:
    from absl import flags
    flag = flags.FLAGS["verbosity"]
    return flag.value if flag.present else None


def setup(workdir: str, verbosity: int | None = None,
          from_flags: bool = True, defer_file: bool = False) -> str:
    """Sends logs to the console and to a new file under workdir/logs.

    `verbosity` is absl's (0 info, -1 warning...); by default it is read from
    the -v/--verbosity flag, None where the flag was not given. With
    `defer_file`, the file (and workdir/logs) is created only by
    `open_log_file()`; records wait in memory until then. Returns the log
    file's path. Calling it again replaces the earlier setup.
    """
    if verbosity is None and from_flags:
        verbosity = _verbosity_from_flags()
    level = console_level(verbosity)
    if level > logging.INFO:
        # datasets' tqdm bars ("Generating train split") are library
        # progress, not ours; read when datasets is imported, which is later.
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    directory = os.path.join(workdir, "logs")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(directory, f"run-{stamp}-{os.getpid()}.log")

    root = logging.getLogger()
    for handler in list(root.handlers):  # absl's, and any basicConfig one
        root.removeHandler(handler)
    for handler in _installed:
        handler.close()
    _installed.clear()

    file_handler = LogFileHandler(path)
    file_handler.setLevel(min(level, logging.INFO))
    file_format = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s "
        "%(filename)s:%(lineno)d] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    file_format.converter = time.gmtime
    file_handler.setFormatter(file_format)

    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(ConsoleFormatter())
    console.addFilter(RepeatFilter(path))

    for handler in (file_handler, console):
        root.addHandler(handler)
        _installed.append(handler)
    root.setLevel(min(level, logging.INFO))
    for name in _LIBRARY_LOGGERS:
        _adopt(name)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):  # any other printing library
            _adopt(name, reset_level=False)
    logging.captureWarnings(True)
    for library in _HANDLER_LIBRARIES:
        name = f"{library}.utils.logging"
        if name in sys.modules:
            _adopt_library(sys.modules[name])
        elif not any(isinstance(f, _AfterImport) and f.name == name
                     for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterImport(name, _adopt_library))
    if not defer_file:
        open_log_file()
    return path


def open_log_file() -> str | None:
    """Creates the log file of `setup(..., defer_file=True)` with what was
    logged so far, and names it on the console; a no-op when it is open
    already or when `setup` was not called (the tests, Colab)."""
    for handler in _installed:
        if (isinstance(handler, LogFileHandler)
                and handler in logging.getLogger().handlers):
            if handler.open() and _installed_console_level() > logging.INFO:
                progress_log(f"[logs] library logs go to {handler.path} "
                             "(--verbosity=0 shows them here)")
            return handler.path
    return None


def to_log_file(level: int, message: str) -> None:
    """A record for the log file only (if it is open), not the console."""
    for handler in _installed:
        if (isinstance(handler, LogFileHandler) and handler.stream is not None
                and handler in logging.getLogger().handlers):
            handler.handle(logging.LogRecord(
                "w2s_jax", level, __file__, 0, message, None, None))


def _installed_console_level() -> int:
    """The installed console handler's level (WARNING if none)."""
    for handler in _installed:
        if not isinstance(handler, LogFileHandler):
            return handler.level
    return logging.WARNING
