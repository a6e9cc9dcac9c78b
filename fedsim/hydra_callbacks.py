"""Hydra callbacks of fedsim: :class:`SweepReport` writes a sweep's report when a multirun ends.

Registered in ``conf/config.yaml``::

    hydra:
      callbacks:
        sweep_report:
          _target_: fedsim.hydra_callbacks.SweepReport
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """After ``python -m fedsim -m ...``: ``report.md`` and ``plots/`` over the sweep's jobs.

    Prints ``sweep report: PATH`` as the last line. A report that cannot be written is logged
    as an error and does not fail the sweep: every job's own results are already on disk.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # The sweep's own config: the jobs' configs copy its resolver cache, so a ${now:...}
        # in sweep.dir names the directory the jobs wrote to.
        sweep_dir = Path(config.hydra.sweep.dir)
        # Imported here: Hydra builds this callback for every run, and a single run would
        # otherwise load the sweep report's tables and plots only to never write them.
        from fedsim.report.sweep import write_sweep_report

        try:
            path = write_sweep_report(sweep_dir)
        except Exception:  # the jobs' results stand; the report is an extra
            log.exception("could not write the sweep report in %s", sweep_dir)
            return
        if path is not None:
            print(f"sweep report: {path}")
