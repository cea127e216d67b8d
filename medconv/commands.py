"""Plumbing every `medconv` tool shares: a subcommand table and the argparse entry with medconv's exit codes.

Below every command (they import it, it imports none of them), so `medconv.cli` and the tools with subcommands
(`bench`, `demo-data`) or flags (`infer`, `embed`) behave alike: usage errors exit 2, a `MedconvError` prints one
line naming the problem and exits 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

from medconv.errors import MedconvError


def usage(prog: str, table: dict[str, tuple[str, str]], extra: dict[str, str] | None = None) -> str:
    rows = dict(extra or {})
    rows.update({name: help_ for name, (_, help_) in table.items()})
    width = max(len(n) for n in rows)
    lines = [f"usage: {prog} <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, help_ in rows.items()]
    lines += ["", f"`{prog} <command> --help` for a command's options."]
    return "\n".join(lines)


def dispatch(argv: list[str] | None, table: dict[str, tuple[str, str]], prog: str) -> int:
    """Run `table[argv[0]]`'s `main(argv[1:])`; shared by every command that has subcommands."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog, table))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prog}: unknown command {name!r}; choose from: {', '.join(table)}", file=sys.stderr)
        return 2
    module = importlib.import_module(table[name][0])
    return int(module.main(rest) or 0)


def run_tool(parser, run, argv: list[str] | None, prog: str) -> int:  # noqa: ANN001 -- argparse parser, run(args) -> int
    """Parse `argv` and call `run(args)`: usage errors exit 2 (argparse), a MedconvError prints one line and exits 2."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return run(args)
    except MedconvError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
