"""Our float32 GEMM for small M on AVX-512 CPUs (kvcache/cpu_gemm.cpp), built on first use.

oneDNN's and MKL's kernels read the weights more than once or run far below the core's peak for
the 4-48 rows of a verification pass; ours streams each weight once (measured on this repo's
2-core Xeon, 1 thread, the built-in target's 210 decoder linears: 30 / 34 / 38 / 45 ms at 1 / 4
/ 8 / 16 rows, against oneDNN packed 42 / 46 / 53 / 64 ms and plain 35 / 55 / 72 / 76 ms).

The C++ source is compiled with the system's C++ compiler ($CXX, else g++) against the running
torch's headers into a cache folder ($OUROBOROS_KERNEL_DIR, else $XDG_CACHE_HOME/ouroboros/kernels,
by default ~/.cache/ouroboros/kernels), named by a hash of the source, flags and torch version,
so every process and every later run reuses it. Where it cannot be built or run (no AVX-512, no
compiler, a non-OpenMP torch), `kernel()` says why once in the log and callers keep oneDNN."""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_gemm.cpp")
_ptr, _int = ctypes.c_void_p, ctypes.c_int64


def _flags() -> list[str]:
    torch_dir = Path(torch.__file__).parent
    abi = int(torch.compiled_with_cxx11_abi())
    return ["-O3", "-mavx512f", "-mfma", "-fopenmp", "-std=c++17", "-shared", "-fPIC",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{torch_dir / 'include'}"]


def _libs() -> list[str]:
    lib_dir = Path(torch.__file__).parent / "lib"
    return [f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}", "-ltorch_cpu", "-lc10"]


def _cache_dir() -> Path:
    configured = os.environ.get("OUROBOROS_KERNEL_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ouroboros" / "kernels"


def unusable_reason() -> str | None:
    """Why this machine cannot run the kernel, or None."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512",):
        return f"the CPU offers {torch.backends.cpu.get_cpu_capability()}, not AVX-512"
    if "OpenMP" not in torch.__config__.parallel_info():
        return "this torch does not use OpenMP threads"
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH"
    return None


def build() -> Path:
    """Compile the kernel unless a build of this very source already sits in the cache; returns
    the shared library's path. Raises RuntimeError with the compiler's words on failure."""
    compiler = os.environ.get("CXX", "g++")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(_flags() + _libs()).encode() + torch.__version__.encode()).hexdigest()[:16]
    target = _cache_dir() / f"cpu_gemm-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        done = subprocess.run([compiler, *_flags(), str(SOURCE), "-o", scratch, *_libs()],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} failed:\n{done.stderr[-2000:]}")
        os.replace(scratch, target)  # atomic: a process building beside us finds a whole file
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    return target


@lru_cache(maxsize=1)
def kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (logged once) where this machine cannot use it."""
    reason = unusable_reason()
    if reason is None:
        try:
            library = ctypes.CDLL(str(build()))
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
            reason = str(error)
        else:
            library.ouro_pack.argtypes = [_ptr, _int, _int, _ptr]
            library.ouro_linear.argtypes = [_ptr, _int, _int, _ptr, _int, _ptr, _ptr]
            library.ouro_panel_width.restype = _int
            return library
    log.info("our CPU GEMM is off (%s): linear layers use oneDNN", reason)
    return None


def pack(library: ctypes.CDLL, weight: torch.Tensor) -> torch.Tensor:
    """The N x K float32 weight in the kernel's panel layout (a new flat tensor)."""
    weight = weight.detach().contiguous()
    out_features, in_features = weight.shape
    width = library.ouro_panel_width()
    packed = torch.empty(-(-out_features // width) * width * in_features, dtype=torch.float32)
    library.ouro_pack(weight.data_ptr(), out_features, in_features, packed.data_ptr())
    return packed


def linear(library: ctypes.CDLL, x: torch.Tensor, packed: torch.Tensor, out_features: int,
           bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T + bias through the kernel, for a float32 CPU x of any leading shape."""
    in_features = x.shape[-1]
    rows = x.numel() // in_features
    flat = x.reshape(rows, in_features).contiguous()
    out = torch.empty(rows, out_features, dtype=torch.float32)
    library.ouro_linear(flat.data_ptr(), rows, in_features, packed.data_ptr(), out_features,
                        None if bias is None else bias.data_ptr(), out.data_ptr())
    return out.view(*x.shape[:-1], out_features)


if __name__ == "__main__":  # `make install` builds the kernel ahead of the first model load
    try:
        reason = unusable_reason()
        print(f"our CPU GEMM: off ({reason})" if reason else f"our CPU GEMM: {build()}")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"our CPU GEMM: off ({error}); linear layers use oneDNN")
