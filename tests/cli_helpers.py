"""Running the CLI in-process in tests: exit code, stdout and stderr of `redblue.cli.main`."""

from __future__ import annotations

import json

from redblue.cli import main


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single `error: ...` line a bad input must produce, asserting there is nothing else."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def check_error_stdout(out: str, err_line: str, code: int, *, as_json: bool) -> None:
    """stdout after a failed verb: nothing, or with --json exactly the JSON error object of the stderr line."""
    if not as_json:
        assert out == "", out
        return
    assert out.count("\n") == 1, out
    assert json.loads(out) == {"error": err_line.removeprefix("error: "), "exit_code": code}
