"""What the command-line tools share: exit statuses, one-line errors, multi-host flags, log hygiene.

Exit statuses (README, "Exit statuses and failures"):

    0   EXIT_OK         finished
    1   EXIT_FAILURE    any other failure (a crash, non-finite loss, a file that failed mid-run)
    2   EXIT_USAGE      bad command line, config, data layout, paths or checkpoint choice;
                        nothing was started or written
    75  EXIT_PREEMPTED  stopped by SIGTERM/SIGINT after saving a checkpoint: run the same
                        command again to resume (75 is sysexits' EX_TEMPFAIL, "try again later")

Errors are printed as one line, `<prog>: error: <message>`, naming the key, file
or value; `--debug` or `NAFNET_DEBUG=1` also prints the traceback.
`run_absl_app` (train.py, eval.py) and `run_main` (nafnet-restore, the converter)
apply this to every tool.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from typing import Callable, Iterator, Optional, Sequence

from absl import flags, logging

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75
DEBUG_ENV = "NAFNET_DEBUG"
CONFIG_ERROR_PREFIX = "invalid config value"  # how nafnet_jax.config words a bad value
MAX_MESSAGE = 600  # characters of an error message printed (the rest is behind --debug)


class UsageError(Exception):
    """A problem with what the user asked for (command line, config, data, paths): exit 2."""


# Exceptions that, raised while checking the inputs (`preflight`), mean the inputs are bad.
_INPUT_ERRORS = (ValueError, KeyError, AttributeError, TypeError, OSError, LookupError)


@contextlib.contextmanager
def preflight() -> Iterator[None]:
    """Checks run inside this block are input checks: their errors become `UsageError` (exit 2)."""
    try:
        yield
    except UsageError:
        raise
    except _INPUT_ERRORS as e:
        raise UsageError(error_message(e)) from e


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """--debug on the command line or NAFNET_DEBUG set to a true value."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in (argv or sys.argv))


def error_message(error: BaseException) -> str:
    """The error as one line (KeyError's quotes dropped, whitespace runs and newlines collapsed)."""
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    else:
        text = str(error)
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{error.filename}: {error.strerror or text}"
    text = " ".join(text.split()) or type(error).__name__
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + f" ... ({DEBUG_ENV}=1 or --debug for all of it)"
    return text


def exit_status(error: BaseException) -> int:
    """EXIT_USAGE for input errors found before work started (and model/checkpoint mismatches)."""
    from nafnet_jax.training import checkpointing  # light: no jax work at import
    if isinstance(error, (UsageError, checkpointing.ModelMismatchError, checkpointing.MissingEntryError,
                          checkpointing.NoIntactCheckpointError)):
        return EXIT_USAGE
    if isinstance(error, ValueError) and str(error).startswith(CONFIG_ERROR_PREFIX):
        return EXIT_USAGE  # a config value found wrong late (e.g. once the devices are known)
    from absl.app import UsageError as AbslUsageError
    if isinstance(error, AbslUsageError):
        return EXIT_USAGE
    return EXIT_FAILURE


def check_output_dir(path: str, flag: str) -> None:
    """Raises UsageError unless `path` is (or can be created as) a writable directory. Writes nothing."""
    if not path:
        raise UsageError(f"{flag} is empty")
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UsageError(f"{flag} {path} is a file, not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {path} is not writable")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path} cannot be created: {parent} is not writable")


def report_error(prog: str, error: BaseException, argv: Optional[Sequence[str]] = None) -> int:
    """Prints `prog: error: message` (and the traceback if asked); returns the exit status."""
    if debug_requested(argv):
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    sys.stderr.write(f"{prog}: error: {error_message(error)}\n")
    sys.stderr.flush()
    return exit_status(error)


def run_main(main: Callable[[], int], prog: str, argv: Optional[Sequence[str]] = None) -> int:
    """Runs a tool's body; any exception becomes one line on stderr and an exit status."""
    try:
        return int(main() or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except SystemExit:
        raise
    except Exception as e:  # every failure becomes one line; --debug shows the traceback
        return report_error(prog, e, argv)


# ---------------------------------------------------------------------------
# absl apps (train.py, eval.py).
# ---------------------------------------------------------------------------

def define_debug_flag() -> None:
    flags.DEFINE_bool("debug", False, f"Print tracebacks with errors (also: {DEBUG_ENV}=1).")


def _config_override_error(error: BaseException, argv: Sequence[str]) -> str:
    """Names the --config.a.b=v override that failed (ml_collections only names the last part)."""
    text = error_message(error)
    names = re.findall(r"'([^']+)'", text)
    for arg in argv:
        match = re.match(r"--(\w+)\.([\w.]+)(=.*)?$", arg)
        if not match:
            continue
        path = match.group(2)
        if any(n in path.split(".") for n in names):
            return (f"unknown config key {path!r} in {arg}" if isinstance(error, (AttributeError, KeyError))
                    else f"bad value in {arg}: {text}")
    return text


def _parse_flags(argv: Sequence[str]) -> Sequence[str]:
    """absl flag parsing whose errors are one line and exit 2."""
    prog = os.path.basename(argv[0]) if argv else "nafnet"
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        cause = e.__cause__ or e.__context__
        error: BaseException = e
        if isinstance(cause, (AttributeError, KeyError)):  # an unknown key: name its full path
            message = _config_override_error(cause, argv)
        else:  # absl's own message names the flag and its value
            message = error_message(e)
    except Exception as e:  # config files and overrides raise their own types while being parsed
        message, error = _config_override_error(e, argv), e
    if debug_requested(argv):
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.exit(EXIT_USAGE)


def run_absl_app(main: Callable[[Sequence[str]], int]) -> None:
    """`absl.app.run(main)` with one-line errors, `--debug`, and the exit statuses above."""
    from absl import app

    def guarded(argv: Sequence[str]) -> None:
        prog = os.path.basename(argv[0]) if argv else "nafnet"
        sys.exit(run_main(lambda: main(argv), prog, argv))

    app.run(guarded, flags_parser=_parse_flags)


# ---------------------------------------------------------------------------
# Multi-host flags and log hygiene.
# ---------------------------------------------------------------------------

def define_distributed_flags() -> None:
    """--distributed / --coordinator_address / --num_processes / --process_id."""
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host; cluster "
                      "environments such as TPU pods and SLURM are detected by JAX).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def initialize_distributed() -> None:
    """Starts jax.distributed as the flags say; logs the device layout."""
    import jax

    fl = flags.FLAGS
    if fl.coordinator_address:
        jax.distributed.initialize(fl.coordinator_address, fl.num_processes, fl.process_id)
    elif fl.distributed:
        jax.distributed.initialize()
    logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s)", jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), jax.default_backend())


class _QuietLibraries:
    """Drops Orbax's INFO chatter (several lines per save/restore); its warnings pass."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
    logging.get_absl_handler().addFilter(_QuietLibraries())


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's C++ and Python log lines off the terminal (before TF is imported).

    Set TF_CPP_MIN_LOG_LEVEL yourself (0 shows everything) to see them.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging as std_logging
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)


def load_config_file(path: str, arg: Optional[str] = None):
    """`get_config([arg])` of a config file (configs/*.py), as ml_collections' config flags read it.

    Args:
      path: the file; 'file.py:arg' passes arg when `arg` is None.
      arg: the config string to pass (overrides one in `path`).
    Raises:
      UsageError naming the file when it is missing or defines no get_config().
    """
    import importlib.util

    file_name, _, file_arg = path.partition(":")
    arg = file_arg if arg is None else arg
    if not os.path.isfile(file_name):
        raise UsageError(f"--config {file_name}: no such file")
    spec = importlib.util.spec_from_file_location("_nafnet_config_file", file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UsageError(f"--config {file_name}: the file defines no get_config()")
    return module.get_config(arg) if arg else module.get_config()
