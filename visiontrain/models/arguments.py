"""Building a library's architecture with the user's `model.kwargs`: a keyword the architecture does not take is
one line naming it and the closest ones it does take, not a TypeError from deep inside the library."""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Callable

from torch import nn

from visiontrain.infra.errors import UsageError

# Keywords the project sets itself: weights come only through finetune.init_from (never a download).
RESERVED = {"pretrained": "finetune.init_from", "weights": "finetune.init_from", "num_classes": "model.num_classes",
            "checkpoint_path": "finetune.init_from", "pretrained_cfg": "model.name (timm/<arch>.<tag>)"}


def check_reserved(name: str, kwargs: dict[str, Any]) -> None:
    for key, instead in RESERVED.items():
        if key in kwargs:
            raise UsageError(f"config key 'model.kwargs.{key}' is invalid for {name}: set {instead} instead")


def accepted_keywords(model_class: type) -> list[str]:
    """The keyword arguments of the class and its bases (timm's blocks forward **kwargs to their parents)."""
    names: list[str] = []
    for cls in model_class.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None or cls is nn.Module:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and param.name != "self":
                names.append(param.name)
    return sorted(set(names))


def build_with_kwargs(name: str, build: Callable[..., nn.Module], kwargs: dict[str, Any],
                      probe: Callable[[], nn.Module]) -> nn.Module:
    """`build(**kwargs)`; an unexpected keyword is a UsageError naming the closest accepted ones (`probe`
    builds the architecture without the user's keywords, to read its class)."""
    check_reserved(name, kwargs)
    try:
        return build(**kwargs)
    except TypeError as err:
        match = re.search(r"unexpected keyword argument '([^']+)'", str(err))
        if not match:
            raise UsageError(f"model.kwargs {kwargs} do not fit {name}: {str(err).splitlines()[0]}") from None
        bad = match.group(1)
        accepted = accepted_keywords(type(probe()))
        close = difflib.get_close_matches(bad, accepted, n=3, cutoff=0.5)
        raise UsageError(f"config key 'model.kwargs.{bad}' is invalid: {name} takes no argument {bad!r}"
                         + (f" (closest: {', '.join(close)})" if close else "")) from None
    except (ValueError, AssertionError) as err:
        raise UsageError(f"model.kwargs {kwargs} do not fit {name}: {str(err).splitlines()[0] or type(err).__name__}"
                         ) from None
