"""Loading a provider of the operator's own from a `package.module:factory` path.

LLM_PROVIDER and STT_PROVIDER accept such a path besides their built-in names: the
factory is called with the service's settings and must return an object with the
attributes of the service's provider protocol.
"""

import importlib
from typing import Any, TypeVar

T = TypeVar("T")


def load_factory(variable: str, spec: str, settings: Any, protocol: type[T], what: str) -> T:
    """Call the factory `spec` names with `settings`; check what it returns.

    `variable` is the setting's name and `what` the protocol's attributes, both
    only for error messages an operator can act on.
    """
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"{variable}={spec!r}: expected 'package.module:factory'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{variable}={spec!r}: cannot import {module_name!r}: {err}") from err
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError as err:
            raise ValueError(f"{variable}={spec!r}: {module_name!r} has no {attr_path!r}") from err
    if not callable(target):
        raise ValueError(f"{variable}={spec!r}: {attr_path!r} is not callable")
    made = target(settings)
    # A structural check only (attributes present), but it catches a factory that
    # returns the wrong thing at start-up instead of on the first message.
    if not isinstance(made, protocol):
        raise TypeError(
            f"{variable}={spec!r} returned {type(made).__name__}, which lacks the "
            f"{protocol.__name__} attributes ({what})"
        )
    return made
