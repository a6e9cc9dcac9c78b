"""Reports of a run: tables (pandas), plots (matplotlib, Agg), ``report.md``, the run directory.

Entry points: ``write.write_run`` (any run's directory, whichever scenario ran),
``sweep.write_sweep_report`` (a Hydra multirun); ``console`` holds what the terminal shows.
Nothing in ``fedsim.core`` imports this package.
"""
