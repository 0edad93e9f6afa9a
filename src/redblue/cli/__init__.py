"""`redblue` command line: thin verbs that parse into dataclasses, call the engine, print results.

Every RedblueError becomes one line on stderr and exit code 2, without a traceback; usage errors
(an unknown option, a missing argument) also exit with 2.
"""

from __future__ import annotations

import json
import sys

from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.exceptions import Abort

from redblue.cli.app import app, interrupt_message, json_printed, reset_run_state
from redblue.errors import RedblueError

# Importing a verb module registers its commands on `app`.
from redblue.cli import verbs_info as _verbs_info  # noqa: E402,F401
from redblue.cli import verbs_data as _verbs_data  # noqa: E402,F401
from redblue.cli import verbs_train as _verbs_train  # noqa: E402,F401
from redblue.cli import verbs_evaluate as _verbs_evaluate  # noqa: E402,F401
from redblue.cli import verbs_reproduce as _verbs_reproduce  # noqa: E402,F401
from redblue.cli import verbs_runs as _verbs_runs  # noqa: E402,F401
from redblue.cli import verbs_arena as _verbs_arena  # noqa: E402,F401


def _error(message: str, code: int, *, as_json: bool) -> int:
    """One `error:` line on stderr; with --json also one JSON object on stdout, so a pipe reads a result."""
    sys.stderr.write(f"error: {message}\n")
    if as_json and not json_printed():
        sys.stdout.write(json.dumps({"error": message, "exit_code": code}) + "\n")
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 2 bad input, 130 interrupted)."""
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in args
    reset_run_state()
    try:
        code = app(args=args, prog_name="redblue", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except NoArgsIsHelpError:  # typer has printed the help already
        return 2
    except ClickException as exc:  # an unknown option, a missing argument, a value of the wrong type
        command = exc.ctx.command_path if getattr(exc, "ctx", None) else "redblue"
        return _error(f"{exc.format_message()} (see `{command} --help`)", exc.exit_code, as_json=as_json)
    except RedblueError as exc:
        return _error(str(exc), 2, as_json=as_json)
    except (KeyboardInterrupt, Abort):
        code = 130
    if code == 130:  # typer turns Ctrl-C into exit code 130
        sys.stderr.write(interrupt_message() + "\n")
    return code if isinstance(code, int) else 0


def entry() -> None:
    sys.exit(main())
