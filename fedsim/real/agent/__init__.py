"""The device agent of real mode: ``fedsim agent --server URL --token T ...``.

An agent registers its device with a fedsim server, sends heartbeats describing the device's
load, long-polls for tasks and runs them: it downloads the model, trains it on local data with
PyTorch and uploads the update, or ships its data, as docs/protocol.md describes. ``config``
holds the settings, ``agent`` the loops, ``client`` the HTTP with retries, ``state`` what
survives a restart, ``work`` the data and the trainers, ``cli`` the command line.
"""
