"""The registry of synthetic-set parameterisations.

Every module of this package defines :class:`~lsslib.parameterisations.base.SynSet`
subclasses decorated with :func:`register`; the package imports each of its modules
once, so adding a parameterisation is adding one module here (plus its row in the
contract tests, ``tests/unit/test_lss_parameterisations.py``). Configuration,
distillation, reports, the summary and the notebooks ask :func:`get` and
:func:`names`; nothing outside this package switches on a parameterisation's name.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Budget, Components, Labels, Layout, Storage, SynSet, real_storage

__all__ = [
    "Budget",
    "Components",
    "Labels",
    "Layout",
    "Storage",
    "SynSet",
    "real_storage",
    "register",
    "get",
    "names",
    "DEFAULT",
]

_REGISTRY: dict[str, type[SynSet]] = {}

#: The paper's method, the default ``parameterisation``.
DEFAULT = "lowrank"


def register(cls: type[SynSet]) -> type[SynSet]:
    """Class decorator: make ``cls`` available as ``parameterisation=cls.name``.

    Raises:
        ValueError: the name is empty or taken by another class.
    """
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no parameterisation name")
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"parameterisation {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    """The registered parameterisation names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> type[SynSet]:
    """The class of parameterisation ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"invalid parameter parameterisation={name!r}: allowed one of "
            + ", ".join(repr(n) for n in _REGISTRY)
        ) from None


# Discovery: every module of this package registers its classes when imported.
for _mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")
