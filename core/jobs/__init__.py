"""Long work off the dashboard's script: jobs on a board in the results store, run by a worker process.

`board` keeps jobs (state, progress, log) in SQLite; `kinds` says what a job can be (sweep, sensitivity,
distillation, export); `worker` runs them in a process of its own that outlives the page, the tab and
the dashboard. Pages and the CLI submit a spec and poll the board.
"""
