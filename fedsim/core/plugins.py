"""Users' own code, named by import path: a config's ``_target_: mypkg.module.Name``.

A strategy, a model, a data set or a selection policy may be the user's own class or factory,
named as Hydra names one (``_target_`` and its keyword arguments beside it). This module finds
the object and calls it, and turns every way that can fail (a module that does not import, a
name it lacks, arguments the callable does not take) into one :class:`PluginError` line that
names the config field and the path, never a traceback.

It imports with the standard library rather than ``hydra.utils.get_object``: the engine
(``fedsim.core``) and the device agent (``fedsim.real``) resolve the same paths, and neither may
import Hydra. The lookup is Hydra's: the longest importable module prefix, then attributes.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

TARGET = "_target_"

# The import paths this process may load plug-ins from (see restrict); None: any.
_allowed: tuple[str, ...] | None = None


class PluginError(ValueError):
    """A ``_target_`` that cannot be used; the message starts with the config field."""


def is_dotted_name(text: str) -> bool:
    """Whether ``text`` is a module path or import path: identifiers joined by dots."""
    return all(part.isidentifier() for part in text.split("."))


def is_import_path(name: str) -> bool:
    """Whether ``name`` is an import path (``pkg.module.Name``) rather than a built-in name."""
    return "." in name


def split_target(where: str, node: Mapping[Any, Any]) -> tuple[str, dict[str, Any]]:
    """``(path, params)`` of a ``_target_`` node: the import path and the other keys."""
    path = node.get(TARGET)
    if not isinstance(path, str) or not is_import_path(path):
        raise PluginError(
            f"{where}.{TARGET}: must be an import path such as mypkg.module.Name, got {path!r}"
        )
    return path, {str(k): v for k, v in node.items() if k != TARGET}


def restrict(prefixes: Sequence[str] | None) -> None:
    """From now on, load plug-ins in this process only from ``prefixes`` (modules or packages,
    ``mypkg`` or ``mypkg.strategies``; empty: no plug-in at all; None: any, the default).
    ``fedsim server`` calls it at start: a job's config comes over the network, and a plug-in
    is code the server runs."""
    global _allowed
    _allowed = None if prefixes is None else tuple(prefixes)


def allowed(path: str, prefixes: Sequence[str]) -> bool:
    """Whether ``path`` lies in one of ``prefixes`` (the prefix itself, or below it)."""
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def locate(where: str, path: str) -> Any:
    """The object ``path`` (``pkg.module.Name`` or ``pkg.module.Class.attr``) names."""
    if not is_dotted_name(path):
        raise PluginError(f"{where}: {path!r} is not an import path (pkg.module.Name)")
    parts = path.split(".")
    if _allowed is not None and not allowed(path, _allowed):
        # Refused before anything is imported: importing a module runs its code.
        granted = ", ".join(_allowed) or "none"
        raise PluginError(
            f"{where}: {path} is not a plug-in this server loads (allowed: {granted}; "
            "fedsim server --plugin MODULE allows one)"
        )
    module = None
    for end in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:end])
        try:
            module = importlib.import_module(name)
            break
        except ModuleNotFoundError as e:
            # Only a missing prefix means "try a shorter one"; a module that is there but
            # fails to import (a missing dependency of it) is the user's error to see.
            if e.name is None or not name.startswith(e.name):
                raise PluginError(f"{where}: importing {name} for {path} failed: {e}") from None
        except Exception as e:  # the user's module raised while importing
            raise PluginError(
                f"{where}: importing {name} for {path} failed: {type(e).__name__}: {e}"
            ) from None
    if module is None:
        raise PluginError(
            f"{where}: cannot import {path}: no module {parts[0]!r} (is its package installed "
            "or on PYTHONPATH?)"
        )
    found: Any = module
    for i, attr in enumerate(parts[end:], start=end):
        try:
            found = getattr(found, attr)
        except AttributeError:
            raise PluginError(
                f"{where}: cannot import {path}: {'.'.join(parts[:i])} has no {attr!r}"
            ) from None
    return found


def check_call(where: str, path: str, fn: Any, params: Mapping[str, Any]) -> None:
    """Refuse ``params`` that ``fn`` does not take, before it is called."""
    if not callable(fn):
        raise PluginError(f"{where}: {path} is a {type(fn).__name__}, not a class or function")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: the call itself will say
    try:
        signature.bind(**params)
    except TypeError as e:
        named = [
            p.name
            for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        raise PluginError(
            f"{where}: {path} cannot take {_kwargs(params)} ({e}); it takes "
            f"{', '.join(named) or 'no keyword arguments'}"
        ) from None


def build(where: str, path: str, params: Mapping[str, Any], expect: type | None = None) -> Any:
    """``path(**params)``, checked: its arguments, any error it raises, the type it returns."""
    fn = locate(where, path)
    check_call(where, path, fn, params)
    try:
        made = fn(**params)
    except Exception as e:
        raise PluginError(
            f"{where}: {path}({_kwargs(params)}) raised {type(e).__name__}: {e}"
        ) from None
    if expect is not None and not isinstance(made, expect):
        raise PluginError(
            f"{where}: {path} returned a {type(made).__name__}, not a {expect.__name__}"
        )
    return made


def factory(where: str, path: str) -> Callable[..., Any]:
    """The callable at ``path``, refused when it is not one."""
    fn = locate(where, path)
    if not callable(fn):
        raise PluginError(f"{where}: {path} is a {type(fn).__name__}, not a class or function")
    return fn


def _kwargs(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "no arguments"
