"""Entry point of the `tilesim` command: parses arguments and runs one subcommand.

Every subcommand has `--json`. Errors from the TilesimError family print one line and exit
with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import importlib
import os
import re
import shlex
import sys
import warnings

from tilesim import __version__
from tilesim.errors import TilesimError, TilesimWarning

# subcommand -> module in tilesim.cli that defines `add_parser(subparsers)` and `run(args)`
SUBCOMMANDS = {
    "devices": "devices",
    "collectives": "collectives",
    "generate": "generate",
    "profile": "generate",
    "sweep": "sweep",
    "fidelity": "fidelity",
    "serve-sim": "serve_sim",
}


# Python arguments the library's messages name, and the flags that set them here
_ARGUMENTS = (
    "max_context", "max_new_tokens", "act_dtype", "kv_dtype", "dtype", "tp", "cores", "batch", "algo",
    "temperature", "top_k", "top_p", "seed", "fabric", "pad_heads", "prompt_len",
    "max_num_seqs", "chunk_size", "requests", "rate", "prefill_buckets", "decode_buckets", "k", "moe_imbalance", "moe",
    "pp", "layers_per_stage", "micro_batches", "cores_per_actor", "actor_memory", "scheduler", "draft_tp", "cv",
    "probes", "cluster",
)  # fmt: skip
_SWITCHES = {"timing_only=True": "--timing-only", "pad_heads=True": "--pad-heads", "stop_at_eos=False": "--ignore-eos"}
_RENAMED = {"k": "speculate", "cluster": "ray"}  # Python arguments whose flag has another name


def in_cli_words(message: str, renamed: dict[str, str] | None = None) -> str:
    """A library message in the command line's words: `name=value` and `name` (Python
    arguments, as the library writes them) become `--name value` and `--name`; `renamed`
    gives a subcommand's own flag for an argument (serve-sim's batch is --max-num-seqs)."""
    renamed = {**_RENAMED, **(renamed or {})}
    for python, flag in _SWITCHES.items():
        message = message.replace(python, flag)
    names = "|".join(_ARGUMENTS)

    def flag(name: str) -> str:
        return "--" + renamed.get(name, name).replace("_", "-")

    def value(m: re.Match) -> str:  # as one would type it: '' and ' ' quoted
        quoted = m[2] if m[2] is not None else m[3]
        return f"{flag(m[1])} {shlex.quote(quoted) if m[4] is None else m[4]}"

    message = re.sub(rf"\b({names})=(?:'([^']*)'|\"([^\"]*)\"|([^\s'\",;:)]*))", value, message)
    return re.sub(rf"`({names})`", lambda m: flag(m[1]), message)


class _Defaults(argparse.HelpFormatter):
    """Help that shows each option's default where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS, []) and "default" not in text
        return f"{text} (default: {default})" if shown and action.option_strings else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tilesim",
        description="Emulate AI inference accelerators running transformer decoders: "
        "the tokens they would generate and the time and memory they would take.",
    )
    parser.add_argument("--version", action="version", version=f"tilesim {__version__}")
    subparsers = parser.add_subparsers(
        dest="command",
        metavar="COMMAND",
        required=True,
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_Defaults),
    )
    added = set()
    for module_name in SUBCOMMANDS.values():
        if module_name not in added:
            importlib.import_module(f"tilesim.cli.{module_name}").add_parser(subparsers)
            added.add(module_name)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning) -> None:
    """tilesim's own warnings as one line in the command line's words; others as Python shows them."""
    if not issubclass(category, TilesimWarning):
        _default(message, category, filename, lineno, file, line)
        return
    print(f"tilesim: warning: {in_cli_words(str(message))}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    args = None
    try:
        words = _values_attached(list(sys.argv[1:] if argv is None else argv))
        args = build_parser().parse_args(words)  # imports the subcommands: Ctrl-C may come here too
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a full disk or a closed pipe shows here, not at the interpreter's exit
        return code
    except TilesimError as exc:
        words = str(exc) if exc.verbatim else in_cli_words(str(exc), getattr(args, "cli_renamed", None))
        print(f"tilesim: error: {words}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tilesim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
        _silence_stdout()
        return 0
    except OSError as exc:
        if exc.errno != errno.ENOSPC or exc.filename is not None:
            raise
        _silence_stdout()
        print("tilesim: error: cannot write the output: no space left on the device", file=sys.stderr)
        return 2


def _values_attached(argv: list[str]) -> list[str]:
    """`--bytes -1K` as `--bytes=-1K`. argparse takes a word that begins with a dash for an
    option unless it is a plain number ("-1"), and says only "expected one argument"; no
    tilesim option begins with a dash and a digit, so such a word is the value, and the
    option's own check names what is wrong with it. Words after `--` are left alone."""
    out: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":
            return out + argv[i:]
        if out and re.match(r"-\d", word) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of what could not be written stays quiet."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)


if __name__ == "__main__":
    sys.exit(main())
