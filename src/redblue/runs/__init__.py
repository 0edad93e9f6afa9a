"""Runs on disk (engine layer): run folders written atomically and resumed cell by cell (`store`),
reading a folder back (`folders`), the SQLite run index (`index`) and the ranking of indexed runs
(`ranking`) that `redblue runs` and `redblue leaderboard` show.
"""
