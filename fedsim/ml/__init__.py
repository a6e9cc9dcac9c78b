"""PyTorch side of fedsim: the model zoo, FLOP counting and measured model specs.

Submodules import torch; ``fedsim.ml.spec`` imports it only when it has to measure a model.
"""
