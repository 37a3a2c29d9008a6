"""How the installed packages compare with the lock (requirements/constraints.txt, written by `make lock`)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from visiontrain.infra.paths import SOURCE_TREE

LOCK = SOURCE_TREE / "requirements" / "constraints.txt"


def locked_versions(lock: Path = LOCK) -> dict[str, Requirement]:
    """The lock's pins that apply to this interpreter and platform (markers evaluated), by package name."""
    pins = {}
    for number, line in enumerate(lock.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as err:
            raise ValueError(f"{lock}:{number}: {err}") from None
        if requirement.marker is None or requirement.marker.evaluate():
            pins[requirement.name.lower()] = requirement
    return pins


def locked_version(name: str, lock: Path = LOCK) -> str:
    """The version the lock pins `name` to on this interpreter and platform (KeyError if it pins none)."""
    (pin,) = locked_versions(lock)[name.lower()].specifier
    return pin.version


def differences_from_lock(lock: Path = LOCK, include_missing: bool = False) -> dict[str, dict[str, str | None]] | None:
    """{package: {"installed": version or None, "locked": version}} for every applicable pin the
    environment does not meet; {} when it meets them all; None without a lock (an installed wheel).
    Packages of the lock that are not installed (optional extras) count only with `include_missing`."""
    if not lock.is_file():
        return None
    differences = {}
    for name, requirement in locked_versions(lock).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
            if not include_missing:
                continue
        # A local label (2.15.0+cu132) meets its public version's pin, as pip itself decides.
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            differences[name] = {"installed": installed, "locked": str(requirement.specifier).lstrip("=")}
    return differences
