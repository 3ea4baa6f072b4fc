"""Compilation targets: the host and presets for x86 CPUs and aarch64 boards, as TVM target dicts, and their export toolchains."""

from __future__ import annotations

import json
import platform
import shutil

import tvm

from ..errors import GwqError, last_line

_AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}

#: Named targets accepted everywhere a target is (``--target NAME``).
PRESETS: dict[str, dict] = {
    "x86-64": {"kind": "llvm"},
    "x86-avx2": {"kind": "llvm", "mcpu": "haswell"},  # any x86-64 with AVX2 + FMA (x86-64-v3), no AVX-512
    "alderlake": {"kind": "llvm", "mcpu": "alderlake"},  # Intel client cores with AVX2 + AVX-VNNI, no AVX-512 (x86-avxvnni)
    "sapphirerapids": {"kind": "llvm", "mcpu": "sapphirerapids"},  # Intel Xeon 4th gen: AVX-512 VNNI + AMX-INT8 (x86-amx)
    "znver3": {"kind": "llvm", "mcpu": "znver3"},  # AMD Zen 3: AVX2, no AVX-512
    "aarch64-neon": {**_AARCH64, "mattr": ["+neon"], "num-cores": 4},
    "aarch64-dotprod": {**_AARCH64, "mattr": ["+neon", "+dotprod"], "num-cores": 4},
    "rpi4": {**_AARCH64, "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 4},  # Raspberry Pi 4 (BCM2711)
    "rpi5": {**_AARCH64, "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"], "num-cores": 4},
    "cortex-a76": {**_AARCH64, "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"], "num-cores": 4},
    "neoverse-n1": {**_AARCH64, "mcpu": "neoverse-n1", "mattr": ["+neon", "+dotprod"], "num-cores": 4},
    # Armv8.2 cores with dotprod but no i8mm (LLVM's cortex-a78 and the Arm TRM agree): the sdot family
    "cortex-a78": {**_AARCH64, "mcpu": "cortex-a78", "mattr": ["+neon", "+dotprod"], "num-cores": 4},
    # FEAT_I8MM (usmmla): the aarch64-i8mm family
    "aarch64-i8mm": {**_AARCH64, "mattr": ["+v8.2a", "+neon", "+dotprod", "+i8mm"], "num-cores": 4},
    "cortex-a710": {**_AARCH64, "mcpu": "cortex-a710", "mattr": ["+neon", "+dotprod", "+i8mm"], "num-cores": 4},
    "neoverse-n2": {**_AARCH64, "mcpu": "neoverse-n2", "mattr": ["+neon", "+dotprod", "+i8mm"], "num-cores": 4},
    "graviton3": {**_AARCH64, "mcpu": "neoverse-v1", "mattr": ["+neon", "+dotprod", "+i8mm"], "num-cores": 4},
}

#: Cross compilers by target triple prefix.
CROSS_COMPILERS = {"aarch64": ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")}


def resolve_target(name) -> tvm.target.Target:
    """``host`` (this CPU), a preset name, a JSON target dict, a dict, or a TVM tag.

    Raises
    ------
    GwqError
        For a name that is none of these (the presets are listed).
    """
    from ..runtime import host_target

    if name is None or name in ("host", "llvm"):
        return host_target()
    if isinstance(name, tvm.target.Target):
        return check_supported(name)
    if not isinstance(name, (str, dict)):
        raise GwqError(f"a target is a name, TVM target JSON, a dict or a tvm.target.Target; got {type(name).__name__} "
                       f"{name!r}")
    try:
        if isinstance(name, dict):
            target = tvm.target.Target(name)
        elif name in PRESETS:
            target = tvm.target.Target(PRESETS[name])
        else:
            target = tvm.target.Target(json.loads(name) if name.strip().startswith("{") else name)
    except Exception as err:
        raise GwqError(f"bad target {name!r} ({last_line(err)}); use {_SUPPORTED}") from None
    return check_supported(target)


_SUPPORTED = f"'host', an llvm target for x86-64 or aarch64 (TVM target JSON), or one of: {', '.join(PRESETS)}"


def check_supported(target: tvm.target.Target) -> tvm.target.Target:
    """``target`` if gwq-tvm can compile and export for it: an ``llvm`` CPU target for this machine or a known cross triple.

    Raises
    ------
    GwqError
        Naming the supported targets for any other kind (``cuda``, ``c``, ...) or
        architecture (a triple without a cross toolchain gwq-tvm knows).
    """
    kind = target.kind.name
    if kind != "llvm":
        raise GwqError(f"target kind {kind!r} is not supported (gwq-tvm compiles integer CPU kernels); use {_SUPPORTED}")
    arch = _arch(target)
    if arch not in (platform.machine(), "x86_64") and arch not in CROSS_COMPILERS:
        raise GwqError(f"target architecture {arch!r} is not supported (no cross toolchain for it); use {_SUPPORTED}")
    return target


def _arch(target: tvm.target.Target) -> str:
    triple = str(target.attrs.get("mtriple", "") or "")
    return triple.split("-")[0] if triple else platform.machine()


def export_compiler(target: tvm.target.Target):
    """The ``fcompile`` for ``export_library``: ``None`` for the host, a cross compiler otherwise.

    Raises
    ------
    GwqError
        Naming the missing toolchain (and its Debian package) when it is not installed.
    """
    arch = _arch(target)
    if arch in ("", platform.machine()):
        return None
    if arch not in CROSS_COMPILERS:
        check_supported(target)  # names the supported targets
        return None
    exe, package = CROSS_COMPILERS[arch]
    if shutil.which(exe) is None:
        raise GwqError(f"exporting for {arch} needs the cross compiler {exe}, which is not installed: apt-get install {package}")
    from tvm.support import cc

    return cc.cross_compiler(exe)
