"""fedsim: a federated-learning testbed that simulates and runs FL over one engine."""

__version__ = "0.1.0"
