"""Our CPU kernels, built on first use: the GEMM for small M (float32 and bfloat16), the
batch-invariant attention (used through kvcache.cpu_attention) and bfloat16 RMSNorm (through
kvcache.norms). Two builds of the same entry points: kvcache/cpu_{gemm,attention,norm}.cpp for
AVX-512 CPUs, and kvcache/cpu_{gemm,attention,norm}_avx2.cpp (8-lane vectors, bfloat16 widened to
float32 in registers) for CPUs with AVX2 and FMA but no AVX-512.

oneDNN's and MKL's kernels read the weights more than once or run far below the core's peak for
the 4-48 rows of a verification pass; ours streams each weight once (measured on this repo's
2-core Xeon, 1 thread, the built-in target's 210 decoder linears: 30 / 34 / 38 / 45 ms at 1 / 4
/ 8 / 16 rows, against oneDNN packed 42 / 46 / 53 / 64 ms and plain 35 / 55 / 72 / 76 ms).

On AVX-512, bfloat16 needs AVX512-BF16 (`bf16_unusable_reason`). Every kernel computes each row's result in
the same order whatever else is in the call, so a wide pass gives a row bit for bit what a
one-row pass gives it.

The C++ sources are compiled with the system's C++ compiler ($CXX, else g++) against the running
torch's headers into a cache folder ($OUROBOROS_KERNEL_DIR, else $XDG_CACHE_HOME/ouroboros/kernels,
by default ~/.cache/ouroboros/kernels), named by a hash of the source, flags and torch version,
so every process and every later run reuses it. Where it cannot be built or run (neither AVX-512
nor AVX2, no compiler, a non-OpenMP torch), `kernel()` says why once in the log and callers keep oneDNN."""
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

_HERE = Path(__file__).parent
# per instruction set (torch's name for what the CPU offers): the sources and their ISA flags
BUILDS = {
    "AVX512": (("cpu_gemm.cpp", "cpu_attention.cpp", "cpu_norm.cpp"),
               ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma"]),
    "AVX2": (("cpu_gemm_avx2.cpp", "cpu_attention_avx2.cpp", "cpu_norm_avx2.cpp"), ["-mavx2", "-mfma", "-mf16c"]),
}
HEADERS = ("cpu_avx2.h",)
_ptr, _int = ctypes.c_void_p, ctypes.c_int64


def isa() -> str:
    """The build this CPU takes: "AVX512", else "AVX2" (its AVX-512 kernels need more than AVX2)."""
    return "AVX512" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "AVX2"


def sources() -> tuple[Path, ...]:
    return tuple(_HERE / name for name in BUILDS[isa()][0])


def _flags() -> list[str]:
    torch_dir = Path(torch.__file__).parent
    abi = int(torch.compiled_with_cxx11_abi())
    return ["-O3", *BUILDS[isa()][1], "-fopenmp", "-std=c++17", "-shared", "-fPIC",
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
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX2"):
        return f"the CPU offers {torch.backends.cpu.get_cpu_capability()}, neither AVX-512 nor AVX2"
    if "OpenMP" not in torch.__config__.parallel_info():
        return "this torch does not use OpenMP threads"
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH"
    return None


def bf16_unusable_reason() -> str | None:
    """Why this machine cannot run the bfloat16 GEMM, or None."""
    reason = unusable_reason()
    if reason is None and isa() == "AVX512" and not torch.cpu._is_avx512_bf16_supported():
        reason = "the CPU has no AVX512-BF16"
    return reason


def build() -> Path:
    """Compile the kernel unless a build of this very source already sits in the cache; returns
    the shared library's path. Raises RuntimeError with the compiler's words on failure."""
    compiler = os.environ.get("CXX", "g++")
    source = b"".join(path.read_bytes() for path in (*sources(), *(_HERE / name for name in HEADERS)))
    key = hashlib.sha256(source + " ".join(_flags() + _libs()).encode() + torch.__version__.encode()).hexdigest()[:16]
    target = _cache_dir() / f"cpu_gemm-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        done = subprocess.run([compiler, *_flags(), *map(str, sources()), "-o", scratch, *_libs()],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"building {', '.join(path.name for path in sources())} failed:\n{done.stderr[-2000:]}")
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
            library.ouro_pack_bf16.argtypes = [_ptr, _int, _int, _ptr]
            library.ouro_linear_bf16.argtypes = [_ptr, _int, _int, _ptr, _int, _ptr, _ptr]
            library.ouro_attention.argtypes = [ctypes.c_int, _ptr, _ptr, _int, _int, _int, _int, _ptr, _ptr, _ptr, _int, _int,
                                               _ptr, _ptr, _ptr, ctypes.c_float, ctypes.c_float, _ptr]
            library.ouro_attention_max_head_dim.restype = _int
            library.ouro_rms_norm_bf16.argtypes = [_ptr, _int, _int, _ptr, ctypes.c_float, ctypes.c_int, _ptr]
            return library
    log.info("our CPU GEMM is off (%s): linear layers use oneDNN", reason)
    return None


def pack(library: ctypes.CDLL, weight: torch.Tensor) -> torch.Tensor:
    """The N x K float32 or bfloat16 weight in the kernel's panel layout (a new flat tensor; for
    bfloat16, int32 pairs of consecutive k)."""
    weight = weight.detach().contiguous()
    out_features, in_features = weight.shape
    width = library.ouro_panel_width()
    panels = -(-out_features // width) * width
    if weight.dtype == torch.bfloat16:
        packed = torch.empty(panels * -(-in_features // 2), dtype=torch.int32)
        library.ouro_pack_bf16(weight.data_ptr(), out_features, in_features, packed.data_ptr())
        return packed
    packed = torch.empty(panels * in_features, dtype=torch.float32)
    library.ouro_pack(weight.data_ptr(), out_features, in_features, packed.data_ptr())
    return packed


def linear(library: ctypes.CDLL, x: torch.Tensor, packed: torch.Tensor, out_features: int,
           bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T + bias through the kernel, for a CPU x of any leading shape: float32 with a float32
    `packed`, or bfloat16 with a bfloat16 one (float32 sums rounded once to bfloat16 at the end)."""
    in_features = x.shape[-1]
    rows = x.numel() // in_features
    flat = x.reshape(rows, in_features).contiguous()
    if packed.dtype == torch.int32:
        bias = None if bias is None else bias.float().contiguous()
        out = torch.empty(rows, out_features, dtype=torch.bfloat16)
        library.ouro_linear_bf16(flat.data_ptr(), rows, in_features, packed.data_ptr(), out_features,
                                 None if bias is None else bias.data_ptr(), out.data_ptr())
        return out.view(*x.shape[:-1], out_features)
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
