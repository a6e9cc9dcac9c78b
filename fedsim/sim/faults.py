"""The fault plan's former home, kept while ``fedsim.fl_app`` still imports it from here.

The plan lives in :mod:`fedsim.core.faults`, shared by every runtime; this module goes once
the composition root imports it from there.
"""

from fedsim.core.faults import FaultPlan, LinkChange, Outage

__all__ = ["FaultPlan", "LinkChange", "Outage"]
