"""`redblue attacks` and `redblue models`: list what is registered."""

from __future__ import annotations

import dataclasses

from rich.console import Console
from rich.table import Table

from redblue.attacks import ATTACKS
from redblue.cli.app import JsonOption, app, print_json
from redblue.models import MODELS, build_model, input_shape, parameter_count


def _fields(params_type: type) -> list[dict[str, object]]:
    out = []
    for f in dataclasses.fields(params_type):
        default = None if f.default is dataclasses.MISSING else f.default
        out.append({"name": f.name, "type": str(f.type), "default": default})
    return out


@app.command("attacks")
def list_attacks(as_json: JsonOption = False) -> None:
    """List the registered attacks with their parameters."""
    rows = [
        {
            "name": e.name,
            "norm": e.norm,
            "threat": e.threat,
            "iterative": e.iterative,
            "targeted": e.targeted,
            "summary": e.summary,
            "params": _fields(e.params_type),
        }
        for e in sorted(ATTACKS.values(), key=lambda e: e.name)
    ]
    if as_json:
        print_json({"attacks": rows})
        return
    table = Table("attack", "norm", "threat", "parameters (default)", "what it is")
    for row in rows:
        params = ", ".join(f"{p['name']}={p['default']}" for p in row["params"])
        table.add_row(row["name"], row["norm"], row["threat"], params, row["summary"])
    Console().print(table)


@app.command("models")
def list_models(as_json: JsonOption = False) -> None:
    """List the model architectures: what each is, its parameter count and its spec fields."""
    rows = []
    for entry in MODELS.values():
        spec = entry.spec_type()
        rows.append(
            {
                "name": entry.name,
                "summary": entry.summary,
                "parameter_count": parameter_count(build_model(spec)),  # at the defaults (input_shape, 10 classes)
                "input_shape": list(input_shape(spec)),
                "params": _fields(entry.spec_type),
            }
        )
    if as_json:
        print_json({"models": rows})
        return
    table = Table("model", "parameters", "input", "spec fields (default)", "what it is")
    for row in rows:
        fields = ", ".join(f"{p['name']}={p['default']}" for p in row["params"])
        shape = "x".join(map(str, row["input_shape"]))
        table.add_row(row["name"], f"{row['parameter_count']:,}", shape, fields, row["summary"])
    Console().print(table)
