"""Reports of runs: the paper's values (`paper_values`), paper-versus-ours tables (`tables`), report.md
(`markdown`) and PNG figures (`figures`). Import the submodule you need: `figures` loads matplotlib."""
