"""Loading a provider of the operator's own from a `package.module:factory` path.

LLM_PROVIDER and STT_PROVIDER accept such a path besides their built-in names: the
factory is called with the service's settings and must return an object with the
attributes of the service's provider protocol, whose methods take the arguments the
service passes. Anything else is refused at start-up, with the reason, rather than
on every message.
"""

import collections.abc
import inspect
import pkgutil
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _protocol_methods(protocol: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in vars(protocol).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


def _yields(method: Any) -> bool:
    """Whether the protocol's `method` returns an async iterator."""
    returns = inspect.signature(method).return_annotation
    return typing.get_origin(returns) in (
        collections.abc.AsyncIterator,
        collections.abc.AsyncGenerator,
    )


def _placeholder_call(method: Any) -> tuple[list[None], dict[str, None]]:
    """Arguments shaped as a call of the protocol's `method` makes them (self left out)."""
    args: list[None] = []
    kwargs: dict[str, None] = {}
    for param in list(inspect.signature(method).parameters.values())[1:]:
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            args.append(None)
        elif param.kind is param.KEYWORD_ONLY:
            kwargs[param.name] = None
    return args, kwargs


def check_implements(made: object, protocol: type, label: str) -> None:
    """TypeError naming what `made` lacks to be used as `protocol`."""
    problems = []
    for name in getattr(protocol, "__annotations__", {}):
        if not hasattr(made, name):
            problems.append(f"no attribute {name!r}")
    for name, expected in _protocol_methods(protocol).items():
        actual = getattr(made, name, None)
        if not callable(actual):
            problems.append(f"no method {name}()")
            continue
        if inspect.iscoroutinefunction(expected) and not inspect.iscoroutinefunction(actual):
            problems.append(f"{name}() must be `async def`")
        if _yields(expected) and not inspect.isasyncgenfunction(actual):
            problems.append(f"{name}() must be an async generator (`async def` with `yield`)")
        args, kwargs = _placeholder_call(expected)
        try:
            inspect.signature(actual).bind(*args, **kwargs)
        except TypeError as err:
            wanted = str(inspect.signature(expected)).replace("(self, ", "(", 1)
            problems.append(f"{name}() cannot be called as {name}{wanted}: {err}")
        except ValueError:
            # No signature to read (a builtin): it is taken on trust.
            continue
    if problems:
        raise TypeError(f"{label} is not a usable {protocol.__name__}: " + "; ".join(problems))


def load_factory(variable: str, spec: str, settings: Any, protocol: type[T]) -> T:
    """Call the factory `spec` names with `settings`; check what it returns.

    `variable` is the setting's name, for error messages an operator can act on.
    """
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"{variable}={spec!r}: expected 'package.module:factory'")
    try:
        target: Any = pkgutil.resolve_name(spec)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{variable}={spec!r} cannot be loaded: {err}") from err
    if not callable(target):
        raise ValueError(f"{variable}={spec!r} is not callable")
    made = target(settings)
    check_implements(made, protocol, f"what {variable}={spec!r} returned ({type(made).__name__})")
    return made  # type: ignore[no-any-return]
