"""Our float32 CPU GEMM (kvcache/cpu_gemm.cpp, or cpu_gemm_avx2.cpp without AVX-512) against
torch's, on shapes that do not fit its blocks, on one thread and several; a row's bits in any
batch; and the fallback to oneDNN still computes the same."""
import pytest
import torch

from kvcache import cpu_gemm
from kvcache.packed import KERNEL_MAX_ROWS, PackedLinear

needs_kernel = pytest.mark.skipif(cpu_gemm.unusable_reason() is not None,
                                  reason=f"our CPU GEMM cannot run here: {cpu_gemm.unusable_reason()}")


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("out_features,in_features", [(48, 16), (40, 48), (100, 37), (7, 1)])
def test_the_kernel_computes_x_times_w_transposed(threads, out_features, in_features):
    library = cpu_gemm.kernel()
    assert library is not None
    torch.manual_seed(out_features)
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    packed = cpu_gemm.pack(library, weight)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in (1, 2, 3, 8, 9, 16, 17, 33):
            x = torch.randn(rows, in_features)
            expected = x.double() @ weight.double().T
            got = cpu_gemm.linear(library, x, packed, out_features, None)
            torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-5)
            with_bias = cpu_gemm.linear(library, x, packed, out_features, bias)
            torch.testing.assert_close(with_bias.double(), expected + bias.double(), atol=1e-4, rtol=1e-5)
    finally:
        torch.set_num_threads(before)


@needs_kernel
@pytest.mark.parametrize("out_features,in_features", [(49, 37), (130, 1000)])
def test_a_float32_row_is_the_same_bits_in_any_batch(out_features, in_features):
    library = cpu_gemm.kernel()
    torch.manual_seed(in_features)
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    packed = cpu_gemm.pack(library, weight)
    x = torch.randn(KERNEL_MAX_ROWS, in_features)
    alone = torch.cat([cpu_gemm.linear(library, x[i : i + 1], packed, out_features, bias) for i in range(len(x))])
    for rows in (2, 5, 7, 8, 13, 16, 17, 40, KERNEL_MAX_ROWS):  # one tile, several, several k chunks
        assert torch.equal(cpu_gemm.linear(library, x[:rows], packed, out_features, bias), alone[:rows]), rows


@needs_kernel
def test_a_long_k_sums_every_chunk_and_leading_dimensions_survive():
    torch.manual_seed(1)
    linear = torch.nn.Linear(1000, 130)
    layer = PackedLinear(linear)
    assert layer.backend == "kernel"
    x = torch.randn(2, 10, 1000)  # 20 rows: three row blocks, eight k chunks
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), linear(x), atol=1e-4, rtol=1e-4)
        long = torch.randn(1, KERNEL_MAX_ROWS + 1, 1000)  # past the kernel's rows: plain W
        torch.testing.assert_close(layer(long), linear(long), atol=1e-4, rtol=1e-4)
        assert layer(torch.randn(1, 0, 1000)).shape == (1, 0, 130)  # no rows: an empty answer, no crash
        strided = torch.randn(20, 2000)[:, ::2]  # not contiguous
        torch.testing.assert_close(layer(strided), linear(strided), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("use_kernel", [True, False])
def test_both_backends_give_the_plain_layers_results(use_kernel):
    torch.manual_seed(2)
    linear = torch.nn.Linear(64, 72, bias=False)
    layer = PackedLinear(linear, use_kernel=use_kernel)
    assert layer.backend == ("kernel" if use_kernel and cpu_gemm.kernel() is not None else "onednn")
    with torch.inference_mode():
        for rows in (1, 4, 12):
            x = torch.randn(1, rows, 64)
            torch.testing.assert_close(layer(x), linear(x), atol=1e-5, rtol=1e-5)


def test_a_build_is_cached_by_its_source(tmp_path, monkeypatch):
    if cpu_gemm.unusable_reason() is not None:
        pytest.skip(cpu_gemm.unusable_reason())
    monkeypatch.setenv("OUROBOROS_KERNEL_DIR", str(tmp_path))
    first = cpu_gemm.build()
    assert first.parent == tmp_path and first.exists()
    stamp = first.stat().st_mtime_ns
    assert cpu_gemm.build() == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch left behind


def test_two_processes_building_at_once_both_load_one_whole_library(tmp_path):
    if cpu_gemm.unusable_reason() is not None:
        pytest.skip(cpu_gemm.unusable_reason())
    import os
    import subprocess
    import sys

    script = ("from kvcache import cpu_gemm; "
              "print(cpu_gemm.build()); assert cpu_gemm.kernel() is not None")
    env = {**os.environ, "OUROBOROS_KERNEL_DIR": str(tmp_path)}
    builders = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
    paths = [builder.communicate(timeout=300)[0].strip() for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0]
    assert paths[0] == paths[1] and [p.name for p in tmp_path.iterdir()] == [os.path.basename(paths[0])]
