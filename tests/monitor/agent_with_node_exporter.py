"""``fedsim agent`` that also declares a node_exporter endpoint when it registers (test helper).

The agent declares its own ``/metrics`` (``--metrics-port``) but has no option yet for the
node_exporter running beside it; the integration test starts its agents through this script,
which adds ``$FEDSIM_TEST_NODE_EXPORTER`` (a URL; unset or empty: nothing) to the registration.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from fedsim.real.agent import agent
from fedsim.real.agent.cli import main

NODE_EXPORTER = os.environ.get("FEDSIM_TEST_NODE_EXPORTER", "")


class Agent(agent.Agent):
    def _registration(self, device_id: int | None) -> dict[str, Any]:
        body = super()._registration(device_id)
        if NODE_EXPORTER:
            body["endpoints"] = {**body.get("endpoints", {}), "node_exporter": NODE_EXPORTER}
        return body


if __name__ == "__main__":
    agent.Agent = Agent  # the CLI imports the class from its module when it runs
    sys.exit(main(sys.argv[1:]))
