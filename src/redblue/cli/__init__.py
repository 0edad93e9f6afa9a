"""`redblue` command line: thin verbs that parse into dataclasses, call the engine, print results.

Every RedblueError becomes one line on stderr and exit code 2, without a traceback; usage errors
(an unknown option, a missing argument) also exit with 2.
"""

from __future__ import annotations

import sys

from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.exceptions import Abort

from redblue.cli.app import app
from redblue.errors import RedblueError

# Importing a verb module registers its commands on `app`.
from redblue.cli import verbs_info as _verbs_info  # noqa: E402,F401
from redblue.cli import verbs_data as _verbs_data  # noqa: E402,F401
from redblue.cli import verbs_train as _verbs_train  # noqa: E402,F401
from redblue.cli import verbs_evaluate as _verbs_evaluate  # noqa: E402,F401
from redblue.cli import verbs_reproduce as _verbs_reproduce  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 2 bad input, 130 interrupted)."""
    try:
        code = app(args=argv, prog_name="redblue", standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except NoArgsIsHelpError as exc:
        sys.stderr.write(exc.ctx.get_help() + "\n" if exc.ctx else f"{exc.format_message()}\n")
        return 2
    except ClickException as exc:  # an unknown option, a missing argument, a value of the wrong type
        command = exc.ctx.command_path if getattr(exc, "ctx", None) else "redblue"
        sys.stderr.write(f"error: {exc.format_message()} (see `{command} --help`)\n")
        return exc.exit_code
    except RedblueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except (KeyboardInterrupt, Abort):
        code = 130
    if code == 130:  # typer turns Ctrl-C into exit code 130
        sys.stderr.write("interrupted; finished work is kept and a rerun resumes from it\n")
    return code if isinstance(code, int) else 0


def entry() -> None:
    sys.exit(main())
