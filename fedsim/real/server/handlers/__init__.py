"""Request handlers, one module per resource; each class takes its dependencies as
keyword arguments and exposes one coroutine method per route."""
