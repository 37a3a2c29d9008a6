"""The offline install: a wheelhouse installs the project into a fresh venv with no network, no apt
and no compiler, and its FFCV wheel carries the native libraries FFCV needs.

Every command of the offline machine runs in a new network namespace (no network at all) where the
system's OpenCV and libjpeg-turbo libraries and the C/C++ compilers are covered by empty files, so
nothing can be downloaded, compiled or borrowed from the system. Torch comes from "the machine":
a site directory holding only torch, torchvision and what they need, as a cluster image provides.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from tests.helpers import PYTHON, ROOT, ok, tiny_args

pytestmark = [
    pytest.mark.slow, pytest.mark.xdist_group("install"),
    # The isolation needs root (namespaces, bind mounts); building the wheelhouse needs PyPI.
    pytest.mark.requires_root,
    pytest.mark.skipif(not all(map(shutil.which, ("unshare", "ip", "ldd"))),
                       reason="OFFLINE INSTALL TESTS NOT RUN: they need unshare (util-linux) and ip (iproute2), "
                              "which make setup-dev installs as root"),
]

SYSTEM_LIBRARIES = ("libopencv_core.so", "libopencv_imgproc.so", "libturbojpeg.so")
COMPILERS = ("gcc", "cc", "g++", "c++", "x86_64-linux-gnu-gcc-12", "x86_64-linux-gnu-g++-12")
# Libraries every Linux has (glibc and the C++ runtime): the only ones a wheel may take from the system.
GLIBC_AND_RUNTIME = re.compile(r"^(libc|libm|libdl|librt|libpthread|libutil|libresolv|libstdc\+\+|libgcc_s|"
                               r"ld-linux[-\w]*)\.so")


def offline(*cmd: str | Path) -> list[str]:
    """`cmd` with no network, and without the system's OpenCV, libjpeg-turbo and compilers."""
    hidden = [path for name in SYSTEM_LIBRARIES for path in glob.glob(f"/usr/lib/x86_64-linux-gnu/{name}*")
              if os.path.isfile(path) and not os.path.islink(path)]
    hidden += [os.path.realpath(found) for found in map(shutil.which, COMPILERS) if found]
    assert any("turbojpeg" in path for path in hidden), "the system libjpeg-turbo this test hides is not installed"
    script = "ip link set lo up; " + "".join(f"mount --bind /dev/null {shlex.quote(p)}; " for p in sorted(set(hidden)))
    return ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script + 'exec "$@"', "sh",
            *map(str, cmd)]


def run_offline(*cmd: str | Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    # PIP_CONFIG_FILE: a machine's own pip configuration (extra wheel folders) must not help.
    return subprocess.run(offline(*cmd), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "PIP_CONFIG_FILE": os.devnull, **(env or {})})


def torch_closure() -> list[metadata.Distribution]:
    """torch, torchvision and every distribution they require here (extras included), recursively."""
    seen: dict[str, metadata.Distribution] = {}
    wanted: set[tuple[str, str]] = set()
    todo = [("torch", ""), ("torchvision", "")]
    while todo:
        name, extra = todo.pop()
        name = name.lower().replace("_", "-")
        if (name, extra) in wanted:
            continue
        wanted.add((name, extra))
        try:
            seen[name] = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for spec in seen[name].requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(requirement.name, "")] + [(requirement.name, e) for e in requirement.extras]
    return list(seen.values())


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def machine_torch(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("machine-torch")
    for dist in torch_closure():
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return site


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def wheelhouse(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    ok(subprocess.run([PYTHON, "scripts/wheelhouse.py", str(out), "--skip-torch"], cwd=ROOT, capture_output=True,
                      text=True, timeout=900))
    return out


@pytest.fixture(scope="session")  # once per test process: xdist may interleave other modules
def offline_venv(tmp_path_factory, wheelhouse, machine_torch) -> tuple[Path, subprocess.CompletedProcess]:
    venv = tmp_path_factory.mktemp("offline") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
    (site_packages,) = venv.glob("lib/python3*/site-packages")
    (site_packages / "machine-torch.pth").write_text(f"{machine_torch}\n")
    setup = run_offline("bash", "scripts/setup.sh", env={"VENV": str(venv), "WHEELHOUSE": str(wheelhouse)})
    return venv, setup


def test_wheelhouse_holds_the_locked_versions_without_torch(wheelhouse):
    manifest = json.loads((wheelhouse / "wheelhouse.json").read_text())
    wheels = {re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower(): w.name.split("-")[1]
              for w in wheelhouse.glob("*.whl")}
    assert wheels == manifest["packages"], "every package of the manifest has exactly one wheel of its version"
    for name in ("ffcv", "deepspeed", "submitit", "accelerate", "omegaconf", "numba", "onnxruntime"):
        assert name in wheels, name
    assert not [name for name in wheels if re.match(r"^(torch|torchvision|triton|nvidia-.*)$", name)]
    lock = (ROOT / "requirements" / "constraints.txt").read_text()
    for name, version in wheels.items():
        assert re.search(rf"^{re.escape(name)}=={re.escape(version)}\b", lock, re.MULTILINE | re.IGNORECASE), name
    assert not list(wheelhouse.glob("*.tar.gz")), "only wheels: the target has no compiler"


def test_ffcv_wheel_is_abi3_and_carries_its_libraries(wheelhouse):
    (wheel,) = wheelhouse.glob("ffcv-*.whl")
    assert "-cp310-abi3-manylinux_" in wheel.name
    with zipfile.ZipFile(wheel) as archive:
        listing = archive.namelist()
        requires = archive.read("ffcv-1.0.2.dist-info/METADATA").decode()
    assert "ffcv/_libffcv.abi3.so" in listing
    for library in ("libopencv_core", "libopencv_imgproc", "libturbojpeg", "libX11", "libz"):
        assert any(re.match(rf"ffcv\.libs/{library}[-.]", name) for name in listing), library
    assert "Requires-Dist: opencv-python-headless" in requires
    assert "Requires-Dist: opencv-python\n" not in requires


def test_setup_installs_offline_without_apt_or_compiler(offline_venv):
    venv, setup = offline_venv
    ok(setup)
    assert "installing from the wheelhouse" in setup.stdout
    assert "apt" not in setup.stdout + setup.stderr
    done = run_offline(venv / "bin" / "python", "-c", "import ffcv, deepspeed, submitit, omegaconf, visiontrain, torch;"
                       "print(torch.__file__)")
    ok(done)
    assert "machine-torch" in done.stdout, "torch is the machine's, not installed from the wheelhouse"


def test_ffcv_extension_resolves_every_library_inside_the_wheel(offline_venv):
    venv, setup = offline_venv
    ok(setup)
    (extension,) = venv.glob("lib/python3*/site-packages/ffcv/_libffcv.abi3.so")
    ldd = ok(run_offline("ldd", extension)).stdout
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.MULTILINE))
    assert "not found" not in ldd
    for name in ("libopencv_core", "libopencv_imgproc", "libturbojpeg"):
        assert any(soname.startswith(name) for soname in resolved), f"{name} is not linked:\n{ldd}"
    outside = {soname: path for soname, path in resolved.items()
               if not GLIBC_AND_RUNTIME.match(soname) and not path.startswith(str(venv))}
    assert not outside, f"libraries resolved outside the wheel: {outside}"


DECODE_BETON = """
import sys, numpy as np
from PIL import Image
from ffcv.fields import IntField, RGBImageField
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.writer import DatasetWriter

paths = sys.argv[2:]
images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
class Photos:
    def __len__(self): return len(images)
    def __getitem__(self, i): return images[i], images[i], i
DatasetWriter(sys.argv[1], {"raw": RGBImageField(write_mode="raw"), "jpeg": RGBImageField(write_mode="jpg"),
                            "label": IntField()}, num_workers=1).from_indexed_dataset(Photos())
decoders = {"raw": [SimpleRGBImageDecoder()], "jpeg": [SimpleRGBImageDecoder()], "label": [IntDecoder()]}
loader = Loader(sys.argv[1], batch_size=len(images), num_workers=1, order=OrderOption.SEQUENTIAL, pipelines=decoders)
(raw, jpeg, label), = list(loader)
truth = np.stack(images)
print("raw_equal", bool((np.asarray(raw) == truth).all()))
print("jpeg_mean_abs_diff", float(np.abs(np.asarray(jpeg).astype(float) - truth).mean()))
print("labels", np.asarray(label).reshape(-1).tolist())
"""


def test_ffcv_wheel_decodes_jpeg_and_raw_fields_offline(offline_venv, cifar_slice, tmp_path):
    venv, setup = offline_venv
    ok(setup)
    photos = sorted(cifar_slice.glob("train/*/0000.jpg"))[:8]
    assert len(photos) == 8
    result = ok(run_offline(venv / "bin" / "python", "-c", DECODE_BETON, tmp_path / "photos.beton", *photos))
    values = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert values["raw_equal"] == "True"
    assert float(values["jpeg_mean_abs_diff"]) < 4.0, "JPEG decoded to the photo (up to compression)"
    assert values["labels"] == str(list(range(8)))


def test_two_process_training_step_in_the_offline_venv(offline_venv, shapes_dir, tmp_path):
    venv, setup = offline_venv
    ok(setup)
    run_dir = tmp_path / "run"
    args = tiny_args(shapes_dir, run_dir, "train.epochs=1", loader="ffcv")
    result = run_offline(venv / "bin" / "python", "-m", "torch.distributed.run", "--standalone",
                         "--nproc_per_node", "2", "train.py", *args)
    ok(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] > 0 and summary["train_samples"] == 400
    assert math.isfinite(summary["final"]["loss"])


LOAD_AND_DECODE = """
import ctypes, importlib.util, sys
path, jpeg_path, height, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
spec = importlib.util.spec_from_file_location("ffcv._libffcv", path)
spec.loader.exec_module(importlib.util.module_from_spec(spec))  # the module init: PyModule_Create2
lib = ctypes.CDLL(path)
lib.imdecode.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p,
                         *[ctypes.c_uint32] * 6, ctypes.c_bool, ctypes.c_bool]
data = open(jpeg_path, "rb").read()
source = (ctypes.c_ubyte * len(data)).from_buffer_copy(data)
out = (ctypes.c_ubyte * (height * width * 3))()
status = lib.imdecode(source, len(data), height, width, out, height, width, 0, 0, 1, 1, False, False)
sys.stdout.write(f"{sys.version_info.major}.{sys.version_info.minor} {status} {bytes(out).hex()}")
"""


def other_pythons() -> list[str]:
    """CPython 3.10+ interpreters of other minor versions on this machine (PATH or pyenv)."""
    found = {}
    for minor in (10, 11, 12, 13):
        pyenv = glob.glob(os.path.expanduser(f"~/.pyenv/versions/3.{minor}.*/bin/python3.{minor}"))
        candidates = [shutil.which(f"python3.{minor}"), *pyenv]
        for candidate in filter(None, candidates):
            if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
                found[minor] = candidate
                break
    return [path for minor, path in sorted(found.items()) if minor != sys.version_info.minor]


def test_ffcv_extension_loads_on_other_python_versions(wheelhouse, cifar_slice, tmp_path):
    """One abi3 build for every Python >= 3.10: the extension's module init and JPEG decoding work on each."""
    from PIL import Image

    pythons = other_pythons()
    if not pythons:
        pytest.skip("no other CPython 3.10+ on this machine to load the abi3 extension with")
    (wheel,) = wheelhouse.glob("ffcv-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "wheel")
    extension = tmp_path / "wheel" / "ffcv" / "_libffcv.abi3.so"
    photo = sorted(cifar_slice.glob("train/*/0000.jpg"))[0]
    truth = np.asarray(Image.open(photo).convert("RGB"))
    height, width, _ = truth.shape
    for python in pythons:
        result = ok(run_offline(python, "-I", "-c", LOAD_AND_DECODE, extension, photo, str(height), str(width)))
        version, status, pixels = result.stdout.split(" ")
        decoded = np.frombuffer(bytes.fromhex(pixels), np.uint8).reshape(height, width, 3)
        assert status == "0", f"Python {version}: imdecode returned {status}"
        assert np.abs(decoded.astype(float) - truth).mean() < 2.0, f"Python {version} decoded another image"
