"""Reports of a run: tables (pandas), plots (matplotlib, Agg), ``report.md``, the run directory.

``write.write_run`` is the entry point; ``console.console_table`` prints Table II for the terminal.
Nothing in ``fedsim.core`` imports this package.
"""
