"""Persistent storage behind the core's interfaces: SQLite databases and safetensors blobs.

``sqlite`` implements ``fedsim.core.repository.ModelRepository`` and
``fedsim.core.registry.RegistryStore``; ``safetensors_io`` encodes, decodes and validates model
files; ``recorder`` keeps a run's versions in a repository. Nothing is re-exported here, so
importing one module loads only what it needs.
"""
