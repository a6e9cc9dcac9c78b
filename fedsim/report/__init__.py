"""Reports of a run: tables (pandas), plots (matplotlib, Agg), ``report.md``, the run directory.

Entry points: ``write.write_run`` (a cloud-vs-client comparison),
``federated.write_federated_run`` (a federated run), ``sweep.write_sweep_report`` (a Hydra
multirun); ``console`` holds what the terminal shows. Nothing in ``fedsim.core`` imports this
package.
"""
