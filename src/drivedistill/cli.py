"""`drivedistill` command line: a thin dispatcher.

Each subcommand lives with the code it drives and owns its argument parser (`main(argv) -> int`);
this file only routes, so that `drivedistill list` does not import torch-heavy modules it does not need.
"""

from __future__ import annotations

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
    lines = ["usage: drivedistill <command> [options]   (drivedistill <command> --help)", "", "commands:"]
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    if cmd == "list":
        return list_main(rest)
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
