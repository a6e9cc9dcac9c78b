"""SimPy runtime: network and compute models, fault injection."""
