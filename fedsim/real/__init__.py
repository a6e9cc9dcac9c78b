"""The real runtime: the fedsim server, the device agent, and the HTTP transport between them.

Submodules are imported directly (``fedsim.real.server``, ``fedsim.real.board``, ...); this
package re-exports nothing, so importing one part never loads another's dependencies.
"""
