"""The engine, pure: stdlib and numpy only.

Nothing here imports a runtime (simpy, aiohttp), torch, a config library or a report library;
``tests/core/test_purity.py`` holds the core to that.
"""
