"""Federated round protocols and what they share.

- ``config``: :class:`~fedsim.core.rounds.config.FederatedConfig`, how rounds run;
- ``base``: the state and the steps every protocol is made of (select, deploy, gather,
  validate, aggregate, evaluate, record);
- ``sync``, ``hierarchical``, ``asynchronous``: the three protocols.

:class:`fedsim.core.coordinator.Coordinator` picks one from the configuration.
"""
