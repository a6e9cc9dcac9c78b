"""byo_fl: a user's own federated-learning pieces, plugged into fedsim by import path.

- ``byo_fl.strategy.FedAvgM``: FedAvg with server momentum (a ``fedsim`` Strategy);
- ``byo_fl.model.TinyNet``: a small convolutional net (a ``torch.nn.Module``);
- ``byo_fl.data.stripes``: a data set of striped images, split across the clients with a
  label skew of its own (a data set and partition factory);
- ``byo_fl.selection.RoundRobin``: clients take part in turn (a ``fedsim`` SelectionPolicy).

``conf/experiment/byo.yaml`` beside this package names them with ``_target_``; see
``examples/byo/README.md`` for how to run it, in the simulator and with ``mode=real``.
"""
