"""The fused sparse-spectrum → Haar synthesis kernels against their torch reference.

The Triton kernels run on CPU under ``TRITON_INTERPRET=1`` in a subprocess (the variable must
be set before triton is imported); they are compared with the torch reference and with the
waveft method's own ``reconstruct``, forward and backward. Skipped cleanly without triton.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from wavecompress.kernels import select_backend, sparse_haar_synthesis, spectrum_grad_reference, synthesis_reference
from wavecompress.methods import waveft_topk

# (shape, per-axis levels, permuted, kept fraction): single level, deep, odd axis (level 0), full spectrum, empty.
CASES = [
    ((16, 24), (1, 1), False, 0.3),
    ((32, 16), (3, 2), True, 0.2),
    ((12, 7), (2, 0), True, 0.5),
    ((8, 8), (3, 3), True, 1.0),
    ((8, 4), (1, 2), False, 0.0),
]


def make_case(shape, levels, permuted, fraction, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = shape[0] * shape[1]
    k = int(round(fraction * n))
    indices = torch.randperm(n, generator=generator)[:k].sort().values.to(torch.int32)
    values = torch.randn(k, generator=generator)
    rows = torch.randperm(shape[0], generator=generator).to(torch.int16) if permuted else None
    cols = torch.randperm(shape[1], generator=generator).to(torch.int16) if permuted else None
    grad = torch.randn(shape, generator=generator)
    return values, indices, rows, cols, grad


def method_reconstruct(values, indices, rows, cols, shape, levels):
    tensors = {"waveft_spectrum": values, "waveft_indices": indices}
    if rows is not None:
        tensors.update(reorder_rows=rows, reorder_cols=cols)
    return waveft_topk.reconstruct(tensors, {"wavelet": "db1", "levels": list(levels)}, shape)


@pytest.mark.parametrize("case", CASES, ids=[f"{s[0]}x{s[1]}-L{l[0]}{l[1]}-{'perm' if p else 'plain'}-{f}" for s, l, p, f in CASES])
def test_torch_backend_matches_the_method_forward_and_autograd(case) -> None:
    shape, levels, permuted, fraction = case
    values, indices, rows, cols, grad = make_case(*case)
    leaf = values.clone().requires_grad_()
    out = sparse_haar_synthesis(leaf, indices, shape, levels, rows, cols, backend="torch")
    (out * grad).sum().backward()
    through_method = values.clone().requires_grad_()
    expected = method_reconstruct(through_method, indices, rows, cols, shape, levels)
    (expected * grad).sum().backward()
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(leaf.grad, through_method.grad, atol=1e-5)
    # Adjoint identity: <S v, g> = <v, Sᵀ g>, with Sᵀ the analysis at the stored indices.
    assert float((out.detach() * grad).sum()) == pytest.approx(float((values * spectrum_grad_reference(grad, indices, levels, rows, cols)).sum()), abs=1e-4)
    if fraction == 1.0:  # a full spectrum is the whole orthonormal transform: norms agree
        assert float(out.detach().norm()) == pytest.approx(float(values.norm()), rel=1e-5)


def test_backend_selection() -> None:
    assert select_backend("cpu") == "torch"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WAVECOMPRESS_KERNELS", "torch")
        assert select_backend("cuda") == "torch"
    try:
        import triton  # noqa: F401

        expected = "triton"
    except ImportError:
        expected = "torch"
    assert select_backend("cuda") == expected
    with pytest.raises(ValueError, match="unknown kernel backend"):
        sparse_haar_synthesis(torch.ones(1), torch.zeros(1, dtype=torch.int32), (2, 2), (1, 1), backend="cuda-magic")


_INTERPRETED = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_kernels import CASES, make_case, method_reconstruct
    from wavecompress.kernels import sparse_haar_synthesis, spectrum_grad_reference, synthesis_reference
    from wavecompress.kernels.haar_triton import spectrum_grad_triton, synthesis_triton
    import triton
    results = []
    for shape, levels, permuted, fraction in CASES:
        values, indices, rows, cols, grad = make_case(shape, levels, permuted, fraction)
        forward = synthesis_triton(values, indices, shape, levels, rows, cols)
        backward = spectrum_grad_triton(grad, indices, shape, levels, rows, cols)
        leaf = values.clone().requires_grad_()
        (sparse_haar_synthesis(leaf, indices, shape, levels, rows, cols, backend="triton") * grad).sum().backward()
        ref_forward = synthesis_reference(values, indices, shape, levels, rows, cols)
        ref_backward = spectrum_grad_reference(grad, indices, levels, rows, cols)
        results.append({{
            "k": int(values.numel()),
            "forward_vs_reference": float((forward - ref_forward).abs().max()) if forward.numel() else 0.0,
            "forward_vs_method": float((forward - method_reconstruct(values, indices, rows, cols, shape, levels)).abs().max()),
            "backward_vs_reference": float((backward - ref_backward).abs().max()) if backward.numel() else 0.0,
            "autograd_vs_reference": float((leaf.grad - ref_backward).abs().max()) if backward.numel() else 0.0,
            "output_norm": float(forward.norm()),
            "interpreted": type(synthesis_triton.__globals__["_synthesis_kernel"]).__name__,
        }})
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def interpreted_results() -> list[dict]:
    pytest.importorskip("triton")
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", _INTERPRETED.format(tests=tests)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{s[0]}x{s[1]}-L{l[0]}{l[1]}-{'perm' if p else 'plain'}-{f}" for s, l, p, f in CASES])
def test_triton_kernels_under_the_interpreter_match_the_reference(interpreted_results: list[dict], index: int) -> None:
    result = interpreted_results[index]
    assert result["interpreted"] == "InterpretedFunction"  # the kernel really ran in triton's CPU interpreter
    assert result["forward_vs_reference"] < 1e-5
    assert result["forward_vs_method"] < 1e-5
    assert result["backward_vs_reference"] < 1e-5
    assert result["autograd_vs_reference"] < 1e-5
    if result["k"]:
        assert result["output_norm"] > 0.1
