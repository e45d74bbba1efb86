"""`drivedistill` command line: a thin dispatcher.

Each subcommand lives with the code it drives and owns its argument parser (`main(argv) -> int`);
this file only routes, so that `drivedistill list` does not import torch-heavy modules it does not need.

Errors: a user error (bad config value, missing file, corrupt checkpoint or store, full disk) prints as one
line naming the problem and the fix, exit code 2; anything else as one line saying it is an internal
error, exit code 1. `--debug` (anywhere on the command line) or DRIVEDISTILL_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

# subcommand → (module with `main(argv)`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "drivedistill.pipeline",
        "the whole study: collect → annotate → latent actions → teachers → students → eval → report",
    ),
    "collect": (
        "drivedistill.data.collect",
        "write a SceneStore: the default world (--preset) or a data source (--source av2 / nuscenes)",
    ),
    "data": ("drivedistill.data.cli", "inspect a SceneStore: validate, show, stats"),
    "annotate": (
        "drivedistill.annotate.cli",
        "VLM-AD annotation of a SceneStore (rules | openai | transformers)",
    ),
    "train": ("drivedistill.train.cli", "train a student with a method on a SceneStore"),
    "eval": ("drivedistill.metrics.cli", "open-loop (ST-P3/UniAD), PDMS v1.1 and closed-loop evaluation"),
    "export": ("drivedistill.train.export", "export a trained student to ONNX / TorchScript"),
    "list": ("drivedistill.cli", "list every registered component with a one-line description"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: drivedistill <command> [options] [--debug]   (drivedistill <command> --help)"]
    lines += ["", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def list_main(argv: list[str]) -> int:
    """Print every registered component, grouped by kind."""
    import argparse

    from drivedistill import registry

    parser = argparse.ArgumentParser(prog="drivedistill list", description=list_main.__doc__)
    parser.add_argument("kind", nargs="?", choices=sorted(registry.KIND_PACKAGES), help="only this kind")
    args = parser.parse_args(argv)
    for kind in [args.kind] if args.kind else list(registry.KIND_PACKAGES):
        entries = registry.entries(kind)
        print(f"{kind}s:")
        if not entries:
            print("  (none registered)")
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            print(f"  {e.name:<{width}}  {e.description}")
    return 0


def _user_error_types() -> tuple[type[BaseException], ...]:
    """The project's own error classes (their messages name the file/field and the fix) + file errors.
    Imported lazily: each lives with the code that raises it."""
    from drivedistill.config import ConfigError
    from drivedistill.registry import RegistryError
    from drivedistill.types import ValidationError

    out: list[type[BaseException]] = [
        ConfigError,
        RegistryError,
        ValidationError,
        FileNotFoundError,
        FileExistsError,
        PermissionError,
        NotADirectoryError,
        IsADirectoryError,
    ]
    for module, name in [
        ("drivedistill.train.checkpoint", "CheckpointError"),
        ("drivedistill.data.store", "StoreError"),
        ("drivedistill.data.schema", "RowDecodeError"),
        ("drivedistill.annotate.cache", "CacheError"),
        ("drivedistill.annotate.schema", "AnswerError"),
        ("drivedistill.metrics.openloop_cli", "InputError"),
        ("drivedistill.data.sources.base", "SourceError"),
    ]:
        mod = sys.modules.get(module)  # only the modules the command imported can have raised
        if mod is not None and hasattr(mod, name):
            out.append(getattr(mod, name))
    return tuple(out)


def _message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split()) or type(e).__name__


def error_line(cmd: str, e: BaseException) -> tuple[str, int]:
    """The one line printed for exception `e` of command `cmd`, and the exit code (2 user, 1 internal)."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = f" writing {e.filename}" if e.filename else ""
        return (
            f"drivedistill {cmd}: error: no space left on the device{where}; free disk space (or choose "
            "another --out) and run the same command again: finished work is kept",
            2,
        )
    if isinstance(e, _user_error_types()):
        return f"drivedistill {cmd}: error: {_message(e)}", 2
    return (
        f"drivedistill {cmd}: internal error ({type(e).__name__}): {_message(e)}. "
        "Re-run with --debug for the traceback and report it.",
        1,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DRIVEDISTILL_DEBUG", "") not in {"", "0"}
    argv = [a for a in argv if a != "--debug"]
    os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")  # `dummy` renders black frames
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"drivedistill: unknown command '{cmd}'.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        if cmd == "list":
            return list_main(rest)
        module = importlib.import_module(COMMANDS[cmd][0])
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        print(f"drivedistill {cmd}: interrupted; the same command resumes", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        line, code = error_line(cmd, e)
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
