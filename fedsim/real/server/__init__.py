"""The fedsim server: Device Manager and AI Model Repository behind the REST API.

``docs/protocol.md`` describes the API; ``app.init_app`` builds the aiohttp application,
``app.run_server`` serves it, ``cli.main`` is ``fedsim server``. Nothing is re-exported here.
"""
