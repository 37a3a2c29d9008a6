"""What `make setup` asks of the system: build tools found by what they are (commands, headers, pkg-config
entries), not by a distribution's package names, and nothing that only the tests use.

The system is varied through PATH: a folder of links to every command of this machine except the ones a
test hides (dpkg and apt-get, as on RHEL; SLURM and munge, as on a login node; the C++ compiler). The
unprivileged runs switch to the user nobody with setpriv, which needs root to start them.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
PACKAGE_MANAGERS = re.compile(r"^(dpkg|apt)")
# What only the test suite uses: the SLURM daemons and clients, munge, and the namespace tools.
TEST_TOOLS = re.compile(r"^(slurm|munge|unmunge|remunge|sbatch$|srun$|scontrol$|sinfo$|squeue$|scancel$|sacct|salloc$|"
                        r"sattach$|sbcast$|sdiag$|sprio$|sreport$|sshare$|sstat$|strigger$|sview$|ip$|unshare$|"
                        r"nsenter$)")
CXX_COMPILERS = re.compile(r"(^|-)(g\+\+|c\+\+|clang\+\+)(-[\d.]+)?$")


def command_folder(folder: Path, hide: re.Pattern, dirs: list[str]) -> Path:
    """`folder` holding a link to every command in `dirs` (the first of each name) except those `hide` matches."""
    folder.mkdir()
    for directory in dirs:
        if not os.path.isdir(directory):
            continue
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            target = folder / entry.name
            if hide.search(entry.name) or target.is_symlink() or not os.access(entry.path, os.X_OK):
                continue
            if entry.is_file():
                target.symlink_to(entry.path)
    return folder


def setup_check(path: Path, *args: str, python: str, venv: Path, user: pwd.struct_passwd | None = None,
                cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in ("CC", "CXX")}
    environment.update({"PATH": str(path), "PYTHON": python, "VENV": str(venv), **env})
    command = ["bash", "scripts/setup.sh", "--check-system", *args]
    if user is not None:
        environment["HOME"] = str(cwd)
        command = [shutil.which("setpriv"), f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                   "--", *command]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=120)


def lacks_build_tools(python: str) -> str | None:
    """What `python` would need to compile FFCV that this machine lacks (None: nothing): the preconditions of
    the tests that expect the check to pass, found here without the script under test."""
    facts = subprocess.run([python, "-c", "import sysconfig as s; print(s.get_config_var('CC').split()[0]); "
                            "print(s.get_config_var('CXX').split()[0]); print(s.get_paths()['include'])"],
                           capture_output=True, text=True)
    if facts.returncode:
        return f"{python} does not run"
    cc, cxx, include = facts.stdout.splitlines()
    missing = [tool for tool in (cc, cxx, "nm", "pkg-config") if shutil.which(tool) is None]
    if not (Path(include) / "Python.h").is_file():
        missing.append(f"{include}/Python.h")
    if shutil.which("pkg-config"):
        missing += [entry for entry in ("opencv4", "libturbojpeg")
                    if subprocess.run(["pkg-config", "--exists", entry]).returncode]
    return f"this machine lacks {', '.join(missing)} (make setup-dev installs them as root)" if missing else None


def base_python() -> str:
    """The interpreter this venv was made from: what `make setup` runs as PYTHON here."""
    return os.path.realpath(sys._base_executable)


@pytest.fixture
def no_package_manager(tmp_path) -> Path:
    """This machine's commands without dpkg and apt-get."""
    folder = command_folder(tmp_path / "bin", PACKAGE_MANAGERS, os.environ["PATH"].split(os.pathsep))
    assert not [name for name in ("dpkg", "dpkg-query", "apt-get") if shutil.which(name, path=str(folder))]
    return folder


def test_check_passes_without_dpkg_or_apt_when_the_build_tools_are_there(no_package_manager, tmp_path):
    missing = lacks_build_tools(base_python())
    if missing:
        pytest.skip(f"BUILD TOOLS ABSENT: {missing}")
    result = setup_check(no_package_manager, python=base_python(), venv=tmp_path / "venv")
    assert result.returncode == 0, result.stderr
    assert "setup: the system has what the install needs" in result.stdout
    for found in ("headers", "nm", "OpenCV", "libturbojpeg"):
        assert found in result.stdout
    assert not (tmp_path / "venv").exists(), "the check creates nothing"


def test_check_names_a_missing_cxx_compiler_and_this_familys_package(tmp_path):
    folder = command_folder(tmp_path / "bin", re.compile(f"{PACKAGE_MANAGERS.pattern}|{CXX_COMPILERS.pattern}"),
                            os.environ["PATH"].split(os.pathsep))
    (folder / "dnf").write_text("#!/bin/sh\nexit 1\n")  # a RHEL-like system: only its name matters
    (folder / "dnf").chmod(0o755)
    result = setup_check(folder, python=base_python(), venv=tmp_path / "venv")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"a C\+\+ compiler: no \S*\+\+", result.stderr), result.stderr
    assert re.search(r"dnf install -y (\S+ )*gcc-c\+\+", result.stderr), result.stderr
    assert "apt-get" not in result.stderr and "zypper" not in result.stderr, "only this system's family"
    assert "conda install -c conda-forge cxx-compiler" in result.stderr
    assert "WHEELHOUSE=DIR" in result.stderr, "the route without a compiler"
    assert "C compiler" not in result.stderr.replace("C++ compiler", ""), "the C compiler is there"


def test_check_names_missing_pkg_config_entries_with_every_familys_packages(no_package_manager, tmp_path):
    if shutil.which("pkg-config") is None:
        pytest.skip("BUILD TOOLS ABSENT: pkg-config (make setup-dev installs it as root)")
    empty = tmp_path / "no-pkgconfig-entries"
    empty.mkdir()
    result = setup_check(no_package_manager, python=base_python(), venv=tmp_path / "venv",
                         PKG_CONFIG_LIBDIR=str(empty), PKG_CONFIG_PATH="")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pkg-config finds no opencv4" in result.stderr and "pkg-config finds no libturbojpeg" in result.stderr
    # No package manager among the commands: the names of every family, and conda's.
    for names in ("apt-get install -y libopencv-dev libturbojpeg0-dev", "dnf install -y opencv-devel turbojpeg-devel",
                  "zypper install -y opencv-devel 'pkgconfig(libturbojpeg)'",
                  "conda install -c conda-forge libopencv libjpeg-turbo"):
        assert names in result.stderr, result.stderr


def test_dev_check_names_absent_test_tools_and_goes_on(tmp_path):
    folder = command_folder(tmp_path / "bin", re.compile(f"{PACKAGE_MANAGERS.pattern}|{TEST_TOOLS.pattern}"),
                            os.environ["PATH"].split(os.pathsep))
    missing = lacks_build_tools(base_python())
    if missing:
        pytest.skip(f"BUILD TOOLS ABSENT: {missing}")
    result = setup_check(folder, "--dev", python=base_python(), venv=tmp_path / "venv")
    assert result.returncode == 0, result.stderr
    assert "missing what some tests need (those tests will skip; the install goes on)" in result.stderr
    for named in ("sbatch", "munged", "unshare", "slurm-wlm munge iproute2 util-linux"):
        assert named in result.stderr, result.stderr


# --- As an unprivileged user ------------------------------------------------------------------------

def unprivileged_python() -> str:
    """A system Python 3.10+ that any user may run (this process's may live in root's home)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.isfile(candidate) and subprocess.run(
                [candidate, "-c", "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))"],
                capture_output=True).returncode == 0:
            return candidate
    pytest.skip("NO SYSTEM PYTHON: no /usr/bin/python3 of 3.10 or newer with venv for the user nobody to run")


@pytest.fixture
def nobody():
    """The user nobody and a folder of its own holding setup's script and the lock: the checkout and pytest's
    folders may be out of its reach (root's alone)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed: it runs the check as another user")
    user = pwd.getpwnam("nobody")
    home = Path(tempfile.mkdtemp(prefix="visiontrain-nobody-"))
    try:
        for name in ("scripts/setup.sh", "requirements/constraints.txt"):
            (home / name).parent.mkdir()
            shutil.copy(ROOT / name, home / name)
        for path in [home, *home.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        yield user, home
    finally:
        shutil.rmtree(home)


def without_test_tools(nobody) -> tuple[str, Path, str, Path]:
    """(user, home, its python, a PATH folder without package managers, SLURM, munge or namespace tools);
    skips where the build tools themselves are absent."""
    user, home = nobody
    python = unprivileged_python()
    missing = lacks_build_tools(python)
    if missing:
        pytest.skip(f"BUILD TOOLS ABSENT: {missing}")
    folder = command_folder(home / "bin", re.compile(f"{PACKAGE_MANAGERS.pattern}|{TEST_TOOLS.pattern}"),
                            list(SYSTEM_DIRS))
    return user, home, python, folder


@pytest.mark.requires_root
def test_check_as_a_user_without_root_slurm_munge_or_namespaces_passes(nobody):
    user, home, python, folder = without_test_tools(nobody)
    assert not [name for name in ("sbatch", "slurmd", "munged", "ip", "unshare", "dpkg-query")
                if shutil.which(name, path=str(folder))]
    result = setup_check(folder, python=python, venv=home / "venv", user=user, cwd=home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "setup: the system has what the install needs" in result.stdout
    assert result.stderr == ""
    assert not (home / "venv").exists()


@pytest.mark.slow
@pytest.mark.requires_root
def test_setup_as_a_user_without_root_or_test_tools_goes_on_to_install(nobody):
    """The whole `make setup` as nobody gets past the system, creates the venv and asks pip for torch (which
    an index-less pip cannot find here: the test stops at the network)."""
    user, home, python, folder = without_test_tools(nobody)
    (home / "wheels").mkdir()
    os.chown(home / "wheels", user.pw_uid, user.pw_gid)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "CC", "CXX", "VIRTUAL_ENV"))}
    env.update({"PATH": str(folder), "PYTHON": python, "VENV": str(home / "venv"), "HOME": str(home),
                "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(home / "wheels")})
    result = subprocess.run([shutil.which("setpriv"), f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                             "--clear-groups", "--", "bash", "scripts/setup.sh"], cwd=home, env=env,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert "missing what the install needs" not in output and "apt-get" not in output, output
    assert f"setup: creating {home / 'venv'}" in result.stdout, output
    assert (home / "venv" / "bin" / "python").exists() and (home / "venv").stat().st_uid == user.pw_uid
    assert re.search(r"(No matching distribution found for|Cannot install) torch", output), output


@pytest.mark.requires_root
def test_setup_as_root_with_apt_get_installs_the_debian_packages_of_what_is_missing(tmp_path):
    """How CI gets the build tools. Here apt-get is a stand-in that installs nothing: setup asks for each
    package once, then names what is still missing."""
    missing = lacks_build_tools(base_python())
    if missing:
        pytest.skip(f"BUILD TOOLS ABSENT: {missing}")
    folder = command_folder(tmp_path / "bin", PACKAGE_MANAGERS, os.environ["PATH"].split(os.pathsep))
    (folder / "apt-get").write_text('#!/bin/sh\necho "$*" >> "$APT_CALLS"\n')
    (folder / "apt-get").chmod(0o755)
    empty = tmp_path / "no-pkgconfig-entries"
    empty.mkdir()
    environment = {key: value for key, value in os.environ.items() if key not in ("CC", "CXX")}
    environment.update({"PATH": str(folder), "PYTHON": base_python(), "VENV": str(tmp_path / "venv"),
                        "PKG_CONFIG_LIBDIR": str(empty), "PKG_CONFIG_PATH": "", "APT_CALLS": str(tmp_path / "apt")})
    result = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (tmp_path / "apt").read_text().splitlines() == [
        "update -qq", "install -y -qq --no-install-recommends libopencv-dev libturbojpeg0-dev"]
    assert "setup: installing system packages: libopencv-dev libturbojpeg0-dev" in result.stdout
    assert "pkg-config finds no opencv4" in result.stderr and "apt-get install -y libopencv-dev" in result.stderr
    assert not (tmp_path / "venv").exists()
