"""``servegen-ml SUBCOMMAND key=value ...`` — Hydra-composed configs from ``configs/``.

Each subcommand is a module in ``servegen_ml.commands`` with a docstring (its
``--help``) and ``run(cfg) -> int``; its config is ``configs/<subcommand>.yaml``.
Exit codes: 0 success, 2 bad input (the message says which file/row/field), 1 a bug.
"""

from __future__ import annotations

import importlib
import sys

from servegen_ml.core.config import compose
from servegen_ml.core.errors import UserError

COMMANDS = {
    "validate": "check a trace against the canonical schema and summarize it",
    "convert": "convert a trace (or sample a ServeGen pool) to a canonical trace file",
    "train": "fit a generator (naive, parametric or neural) and write a checkpoint",
    "generate": "sample a synthetic workload from a checkpoint",
    "export": "write a trace in a load generator's or simulator's format",
    "characterize": "the ServeGen paper's analyses of a trace, with figures",
    "bench": "fidelity metrics of synthetic traces against real ones, with the noise floor",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: servegen-ml SUBCOMMAND [key=value ...] [--help]", "", "subcommands:"]
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
    bad = [a for a in args if "=" not in a]
    if bad:
        print(f"error: arguments are key=value overrides, got {bad}", file=sys.stderr)
        return 2
    try:
        cfg = compose(command, args)
        return int(module.run(cfg) or 0)
    except (UserError, ValueError, FileNotFoundError, KeyError) as e:
        # Library errors name the file, row and field; print them plainly.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no partial output was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
