"""The lock (requirements/constraints.txt): complete, within pyproject's ranges, and what is installed."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from tests.helpers import ROOT
from visiontrain.infra.pinned_versions import LOCK, differences_from_lock, locked_version, locked_versions


def test_installed_packages_are_the_locked_versions():
    assert differences_from_lock(include_missing=True) == {}, "make setup-dev installs the lock; refresh with make lock"


def test_every_declared_dependency_is_locked_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(spec) for spec in project["dependencies"]]
    declared += [Requirement(spec) for extra in project["optional-dependencies"].values() for spec in extra]
    pins = locked_versions()
    assert len(declared) > 20
    for requirement in declared:
        name = requirement.name.lower()
        assert name in pins, f"{name} is declared in pyproject.toml but not locked"
        (pin,) = pins[name].specifier
        assert pin.operator == "==", f"{name}: the lock pins exact versions"
        assert requirement.specifier.contains(pin.version, prereleases=True), f"{name} {pin} outside {requirement}"


def test_lock_keeps_the_gui_opencv_out():
    assert "opencv-python" not in locked_versions(), "FFCV's GUI OpenCV requirement is overridden (headless)"
    assert "opencv-python-headless" in locked_versions()


def test_differences_name_installed_and_locked_versions(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text(
        "packaging==0.0.1\n"  # installed, another version
        "    # via someone\n"
        "pytest==99.0 ; sys_platform == 'never'\n"  # marker false: not this platform's pin
        "not-installed-anywhere==1.0\n"  # missing: an extra nobody installed
    )
    differs = differences_from_lock(lock)
    assert set(differs) == {"packaging"}
    assert differs["packaging"]["locked"] == "0.0.1" and differs["packaging"]["installed"] not in (None, "0.0.1")
    assert differences_from_lock(lock, include_missing=True)["not-installed-anywhere"] == {
        "installed": None, "locked": "1.0"}
    assert differences_from_lock(tmp_path / "absent.txt") is None


def test_local_version_label_meets_its_pin(tmp_path, monkeypatch):
    from visiontrain.infra import pinned_versions as lock_module

    monkeypatch.setattr(lock_module.metadata, "version", lambda name: "2.15.0+cu132")
    lock = tmp_path / "constraints.txt"
    lock.write_text("torch==2.15.0\n")
    assert differences_from_lock(lock) == {}
    lock.write_text("torch==2.14.1\n")
    assert differences_from_lock(lock) == {"torch": {"installed": "2.15.0+cu132", "locked": "2.14.1"}}


def test_lock_file_is_where_the_project_reads_it():
    assert LOCK == ROOT / "requirements" / "constraints.txt" and LOCK.is_file()


def test_locked_version_is_the_pin_for_this_interpreter(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("numpy==1.0 ; python_version < '3'\nnumpy==2.4.6 ; python_version >= '3'\nffcv==1.0.2\n")
    assert locked_version("numpy", lock) == "2.4.6" and locked_version("FFCV", lock) == "1.0.2"
    with pytest.raises(KeyError):
        locked_version("torch", lock)
