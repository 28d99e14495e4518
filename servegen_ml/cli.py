"""``servegen-ml SUBCOMMAND key=value ...`` — Hydra-composed configs from ``configs/``.

Each subcommand is a module in ``servegen_ml.commands`` with a docstring (its
``--help``) and ``run(cfg) -> int``; its config is ``configs/<subcommand>.yaml``.
Exit codes: 0 success; 2 bad input or an output that cannot be written (the
message names the file, row and field, or the key); 1 a bug (a short line, the
traceback in a log file whose path is printed, or on stderr with ``--verbose``);
130 interrupted (SIGINT), 143 terminated (SIGTERM), with no partial output left.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import traceback
import warnings

from servegen_ml.core.config import compose
from servegen_ml.core.errors import UserError, WorkerFinished
from servegen_ml.core.interrupt import Terminated, raise_if_interrupted, terminate_as_interrupt

COMMANDS = {
    "validate": "check a trace against the canonical schema and summarize it",
    "convert": "convert a trace (or sample a ServeGen pool) to a canonical trace file",
    "train": "fit a generator (naive, parametric or neural) and write a checkpoint",
    "generate": "sample a synthetic workload from a checkpoint",
    "export": "write a trace in a load generator's or simulator's format",
    "characterize": "the ServeGen paper's analyses of a trace, with figures",
    "bench": "fidelity metrics of synthetic traces against real ones, with the noise floor",
    "inspect": "show what a checkpoint holds and check every file of it",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: servegen-ml SUBCOMMAND [key=value ...] [--help] [--verbose]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "'servegen-ml SUBCOMMAND --help' shows its options and defaults."]
    return "\n".join(lines)


def _command_help(command: str, module) -> str:
    from omegaconf import OmegaConf

    doc = (module.__doc__ or COMMANDS[command]).strip()
    try:
        defaults = OmegaConf.to_yaml(compose(command, []))
    except UserError as e:
        defaults = f"(config not loadable: {e})\n"
    return f"{doc}\n\nOptions (key=value) and their defaults:\n{defaults}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown subcommand {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"servegen_ml.commands.{command}")
    if any(a in ("-h", "--help") for a in args):
        print(_command_help(command, module))
        return 0
    verbose = "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    bad = [a for a in args if "=" not in a]
    if bad:
        print(f"error: arguments are key=value overrides, got {bad}", file=sys.stderr)
        return 2
    from omegaconf.errors import OmegaConfBaseException

    try:
        with _plain_warnings(), terminate_as_interrupt():
            cfg = compose(command, args)
            status = int(module.run(cfg) or 0)
            raise_if_interrupted()  # a ^C or SIGTERM whose exception something swallowed
            return status
    except WorkerFinished:
        return 0
    except OmegaConfBaseException as e:
        # A missing mandatory option (???) read by the command, or a value of the wrong type.
        key = getattr(e, "full_key", None)
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        if key:
            print(
                f"pass it as {key}=VALUE ('servegen-ml {command} --help' lists the options)", file=sys.stderr
            )
        return 2
    except UserError as e:
        # The project's input errors name the file, row and field (or the key); print them plainly.
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # The environment, not the code: permission denied, disk full, a directory where a file goes, ...
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            "error: ran out of memory; ask for less (a shorter duration_s, a lower rate, fewer clients)",
            file=sys.stderr,
        )
        return 2
    except Terminated:
        print("terminated; no partial output was left behind", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    except Exception as e:
        return _report_bug(command, e, verbose)


@contextlib.contextmanager
def _plain_warnings():
    """Warnings print as 'warning: MESSAGE' (no source line) while a command runs."""
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = previous


def describe_os_error(e: OSError) -> str:
    """'PATH: reason' for an operating-system error (both paths of a rename)."""
    where = ", ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    reason = e.strerror or str(e)
    return f"{where}: {reason}" if where else reason


def _report_bug(command: str, e: Exception, verbose: bool) -> int:
    text = traceback.format_exc()
    print(f"error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
    if verbose:
        print(text, file=sys.stderr, end="")
        where = "the traceback above"
    else:
        fd, log = tempfile.mkstemp(prefix=f"servegen-ml-{command}-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        where = f"the traceback in {log} (or rerun with --verbose)"
    print(f"this is a bug in servegen-ml, please report it with {where}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
