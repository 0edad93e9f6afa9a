"""Reports of runs: report.md (`markdown`), PNG figures (`figures`), and a reproduce run's files (`reproduce_files`).
Everything here renders values the engine computed (results.json); import the submodule you need:
`figures` loads matplotlib."""
