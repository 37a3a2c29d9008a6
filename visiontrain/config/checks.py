"""What the config sections share to check themselves: `Section`, `choice` fields, and the one error format.

Every refused value is a `UsageError` of one line: "config key 'section.key' = value is invalid: what is allowed".
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, ClassVar

from visiontrain.infra.errors import UsageError


def choice(default: str, allowed: tuple[str, ...]) -> Any:
    """A field whose value must be one of `allowed`: declared on the field, checked by `Section.validate`."""
    return dataclasses.field(default=default, metadata={"choices": tuple(allowed)})


def choices_of(section: type) -> dict[str, tuple[str, ...]]:
    """Field name -> allowed values, for the `choice` fields of a section class."""
    return {f.name: f.metadata["choices"] for f in dataclasses.fields(section) if "choices" in f.metadata}


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UsageError(f"config key '{key}' = {value!r} is invalid: allowed {', '.join(allowed)}{hint}")


class Section:
    """Base of the config sections (dataclasses): each one checks its own values.

    `validate` checks the `choice` fields, then the section's `check` (its ranges and the rules
    between its own keys). Rules that read two sections belong to `schema.validate`.
    """

    # The section's name in `Config`: the first part of its keys in error messages.
    section: ClassVar[str]

    def validate(self) -> None:
        for name, allowed in choices_of(type(self)).items():
            check_choice(f"{self.section}.{name}", getattr(self, name), allowed)
        self.check()

    def check(self) -> None:
        """Sections with more than allowed values to check override this."""

    def require(self, ok: bool, name: str, allowed: str) -> None:
        """Refuse this section's key `name`, with its current value, unless `ok`; `allowed` says what would do."""
        if not ok:
            raise UsageError(f"config key '{self.section}.{name}' = {getattr(self, name)!r} is invalid: {allowed}")
