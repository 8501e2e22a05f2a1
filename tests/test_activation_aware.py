"""Activation-aware compression: closed-form optima, and lower output error on real MiniLM activations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner

from wavecompress.calibration import Calibration, collect_second_moments, match_modules, token_batches
from wavecompress.cli import main
from wavecompress.deltas import LayerDelta
from wavecompress.methods import MethodOptions, get_method
from wavecompress.methods.activation_aware import aware_compress, damped, refit_rows

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "fixtures"))


def anisotropic_gram(d_in: int, n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g) * torch.logspace(0, -2, d_in) + torch.randn(n, 1, generator=g)
    return x.T @ x / n


def test_whitened_lora_reaches_the_weighted_eckart_young_optimum() -> None:
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(24, 16, generator=g, dtype=torch.float64)
    gram = anisotropic_gram(16)
    root = torch.from_numpy(np.real(scipy.linalg.sqrtm(damped(gram).numpy())))  # independent C_λ^{1/2}
    s = torch.linalg.svdvals(dense @ root)
    layer = aware_compress("lora", LayerDelta.from_dense("l", dense.float()), 3 * 40 + 7, MethodOptions(), gram)
    assert layer.meta["rank"] == 3
    rebuilt = get_method("lora").reconstruct(layer.tensors, layer.meta, layer.shape).double()
    weighted = float(((dense - rebuilt) @ root).square().sum())
    assert weighted == pytest.approx(float(s[3:].square().sum()), rel=1e-4)
    plain = get_method("lora").compress(LayerDelta.from_dense("l", dense.float()), 3 * 40, MethodOptions())
    plain_rebuilt = get_method("lora").reconstruct(plain.tensors, plain.meta, plain.shape).double()
    assert weighted < 0.9 * float(((dense - plain_rebuilt) @ root).square().sum())


def test_topk_refit_is_the_weighted_least_squares_solution() -> None:
    g = torch.Generator().manual_seed(2)
    coeffs = torch.randn(5, 12, generator=g, dtype=torch.float64)
    metric = damped(anisotropic_gram(12))
    keep = torch.rand(5, 12, generator=g) < 0.4
    fitted = refit_rows(coeffs, keep, metric)
    chol = torch.linalg.cholesky(metric)  # G = L Lᵀ: row error e G eᵀ = ‖e L‖²
    for i in range(5):
        cols = torch.nonzero(keep[i]).flatten().numpy()
        if len(cols) == 0:
            continue
        lhs = chol.numpy()[cols].T  # x_J ↦ x_J L_J
        target = coeffs[i].numpy() @ chol.numpy()
        expected = np.linalg.lstsq(lhs, target, rcond=None)[0]
        assert np.allclose(fitted[i, cols].numpy(), expected, atol=1e-8)
        assert torch.all(fitted[i, ~keep[i]] == 0)


def bbc_text(category: str, files: int) -> str:
    from bbc_task import _read_text, bbc_data_dir

    paths = sorted((bbc_data_dir() / category).glob("*.txt"))[:files]
    return "\n".join(_read_text(p) for p in paths)


@pytest.fixture(scope="module")
def minilm():
    """The fixture task's base model (all-MiniLM-L6-v2), its tokenizer and folder."""
    from bbc_task import base_model_path
    from transformers import AutoModel, AutoTokenizer

    path = base_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), path


def activations(model, batches, names) -> dict[str, torch.Tensor]:
    """Inputs X (tokens × d_in) of the named modules, kept whole (the test's reference)."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [module.register_forward_pre_hook(lambda m, inp, n=name: out[n].append(inp[0].reshape(-1, inp[0].shape[-1])))
             for name, module in match_modules(model, names).items()]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for hook in hooks:
        hook.remove()
    return {n: torch.cat(v).double() for n, v in out.items()}


def test_activation_aware_lowers_output_error_on_real_minilm_activations(minilm) -> None:
    model, tokenizer, _ = minilm
    names = ["bert.encoder.layer.5.intermediate.dense"]  # a PEFT-style name, matched to the base model's module
    batches = token_batches(tokenizer, bbc_text("business", 25), 384)
    calibration = collect_second_moments(model, batches, names)
    assert calibration.tokens == 384
    seen = activations(model, batches, names)
    held_out = activations(model, token_batches(tokenizer, bbc_text("tech", 25), 384), names)
    for name in names:  # the streamed Gram is XᵀX/n of the very activations
        assert torch.allclose(calibration.gram(name).double(), seen[name].T @ seen[name] / len(seen[name]), rtol=1e-4, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    results = {}
    for name in names:
        d_in = held_out[name].shape[1]
        d_out = 1536 if "intermediate" in name else 384
        delta = LayerDelta.from_factors(name, 0.05 * torch.randn(d_out, 8, generator=g), 0.05 * torch.randn(8, d_in, generator=g))
        dense = delta.to_dense().double()
        for method, budget in (("waveft", 3000), ("sparse", 3000), ("lora", 3 * (d_out + d_in))):
            errors = []
            for gram in (None, calibration.gram(name)):
                layer = aware_compress(method, delta, budget, MethodOptions(reorder=None), gram)
                assert layer.stored_values == budget
                rebuilt = get_method(method).reconstruct(layer.tensors, layer.meta, layer.shape).double()
                for x in (seen[name], held_out[name]):
                    errors.append(float(((dense - rebuilt) @ x.T).norm() / (dense @ x.T).norm()))
            results[(name.split("layer.")[1], method)] = errors
    print({key: [round(e, 4) for e in value] for key, value in results.items()})
    for key, (plain_seen, plain_held, aware_seen, aware_held) in results.items():
        assert aware_seen < plain_seen - 0.05, key  # ‖(ΔW − ΔŴ)Xᵀ‖ on the calibration tokens
        assert aware_held < plain_held, key  # and on other tokens (tech articles, not business)
    # lora and plain waveft against independent numpy / scipy / PyWavelets computations of the same optima
    name = names[0]  # the only layer: ``delta`` is still its LayerDelta
    expected = independent_errors(delta.to_dense().double().numpy(), calibration.gram(name), seen[name].numpy(),
                                  held_out[name].numpy(), rank=3, k=3000)
    for method in ("lora", "waveft"):
        got = results[(name.split("layer.")[1], method)]
        want = expected[method]
        assert got[: len(want)] == pytest.approx(want, rel=1e-3), method
    # regression pins for activation-aware waveft (this code's own output when written, not independent values)
    _, _, aware_seen, aware_held = results[("5.intermediate.dense", "waveft")]
    assert aware_seen == pytest.approx(0.8007, abs=0.01)


def independent_errors(dense: np.ndarray, gram: torch.Tensor, seen: np.ndarray, held: np.ndarray, rank: int, k: int):
    """‖(ΔW − ΔŴ)Xᵀ‖/‖ΔW Xᵀ‖ on (seen, held) tokens for: lora plain (truncated SVD), lora activation-aware
    (truncated SVD of ΔW S, S = (C + 1%·mean diag·I)^{1/2} by scipy's sqrtm), waveft plain (k largest
    coefficients of one periodized Haar level per axis, PyWavelets). Returns {method: [values...]}."""
    import pywt

    def errors(approx: np.ndarray) -> list[float]:
        return [float(np.linalg.norm((dense - approx) @ x.T) / np.linalg.norm(dense @ x.T)) for x in (seen, held)]

    def truncate(matrix: np.ndarray) -> np.ndarray:
        u, s, vh = np.linalg.svd(matrix, full_matrices=False)
        return (u[:, :rank] * s[:rank]) @ vh[:rank]

    root = np.real(scipy.linalg.sqrtm(damped(gram).numpy()))
    aware = truncate(dense @ root) @ np.linalg.inv(root)
    approx, details = pywt.dwt2(dense, "haar", mode="periodization")
    bands = [approx, *details]
    threshold = np.sort(np.abs(np.concatenate([b.ravel() for b in bands])))[-k]
    kept = [np.where(np.abs(b) >= threshold, b, 0.0) for b in bands]
    topk = pywt.idwt2((kept[0], tuple(kept[1:])), "haar", mode="periodization")
    return {"lora": errors(truncate(dense)) + errors(aware), "waveft": errors(topk)}


def test_cli_calibration_text_and_saved_file(tmp_path: Path, minilm) -> None:
    from peft import LoraConfig, get_peft_model

    model, _, path = minilm
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], layers_to_transform=[1]))
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=g))
    peft_model.save_pretrained(str(tmp_path / "lora"))
    peft_model.unload()
    (tmp_path / "calib.txt").write_text(bbc_text("politics", 20), encoding="utf-8")
    report = tmp_path / "r.json"
    args = ["convert", str(tmp_path / "lora"), "--budget", "1500", "--no-reorder", "--report", str(report)]
    first = CliRunner().invoke(main, args + ["--out", str(tmp_path / "o1"), "--calibration", str(tmp_path / "calib.txt"),
                                            "--base-model", path, "--calibration-tokens", "256",
                                            "--save-calibration", str(tmp_path / "calib.safetensors")])
    assert first.exit_code == 0, first.output
    assert "act.err" in first.output
    data = json.loads(report.read_text())
    assert data["allocation"]["calibration"].startswith("256 tokens")
    overall = data["overall"]
    assert set(overall) >= {"waveft", "lora", "sparse"}
    saved = Calibration.load(tmp_path / "calib.safetensors")
    assert saved.tokens == 256 and len(saved.names) == 2
    # the reported activation-weighted error, recomputed from the written output and the saved C
    import wavecompress as wc

    rebuilt = wc.reconstruct(tmp_path / "o1")
    num = den = 0.0
    for layer in wc.load_deltas(tmp_path / "lora").layers:
        dense, gram = layer.to_dense().double(), saved.gram(layer.name).double()
        error = dense - rebuilt[layer.name].double()
        num, den = num + float(torch.trace(error @ gram @ error.T)), den + float(torch.trace(dense @ gram @ dense.T))
    assert overall["waveft"]["activation_relative_error"] == pytest.approx((num / den) ** 0.5, rel=1e-4)
    assert all(0.0 < overall[m]["activation_relative_error"] < 1.0 for m in ("lora", "sparse"))
    second = CliRunner().invoke(main, args + ["--out", str(tmp_path / "o2"), "--calibration", str(tmp_path / "calib.safetensors")])
    assert second.exit_code == 0, second.output
    again = json.loads(report.read_text())["overall"]
    assert again["waveft"]["activation_relative_error"] == pytest.approx(overall["waveft"]["activation_relative_error"], rel=1e-6)
    bad = CliRunner().invoke(main, args + ["--out", str(tmp_path / "o3"), "--calibration", str(tmp_path / "calib.txt")])
    assert bad.exit_code == 2 and "needs --base-model" in bad.output


def test_global_allocation_follows_the_activations() -> None:
    import wavecompress as wc

    g = torch.Generator().manual_seed(7)
    layers = {n: torch.randn(32, 4, generator=g) @ torch.randn(4, 48, generator=g) for n in ("loud", "quiet", "mid")}
    grams = {"loud": 100.0 * anisotropic_gram(48, seed=1), "quiet": 0.01 * anisotropic_gram(48, seed=2),
             "mid": anisotropic_gram(48, seed=3)}
    calibration = Calibration(grams, tokens=200)
    results = {}
    for method in ("lora", "waveft"):
        for mode in ("uniform", "global"):
            result = wc.compress(layers, budget=240, method=method, reorder=False, baselines=(), allocate=mode,
                                 calibration=calibration)
            results[(method, mode)] = result.report.overall()[method].activation_relative_error
            budgets = {row.name: row.budget for row in result.report.layers}
            if mode == "global":
                assert budgets["loud"] > budgets["quiet"], (method, budgets)
    # lora: whitened SVD ranks, 3 per layer (uniform) or the 9 largest weighted σ² of all layers (global,
    # exact: every rank costs 32 + 48 values), computed here with numpy / scipy
    for mode, expected in zip(("uniform", "global"), whitened_lora_errors(layers, grams, 3)):
        assert results[("lora", mode)] == pytest.approx(expected, rel=1e-4), mode
    assert results[("waveft", "global")] < 0.6 * results[("waveft", "uniform")]
    # regression pins for waveft (this code's own output when written, not independent values)
    assert results[("waveft", "uniform")] == pytest.approx(0.1802, abs=2e-3)
    assert results[("waveft", "global")] == pytest.approx(0.0896, abs=2e-3)


def whitened_lora_errors(layers: dict[str, torch.Tensor], grams: dict[str, torch.Tensor], rank: int) -> tuple[float, float]:
    """Overall ‖(ΔW − ΔŴ)C^{1/2}‖/‖ΔW C^{1/2}‖ of whitened-SVD LoRA at ``rank`` per layer and at the same
    number of ranks allocated over all layers by weighted σ² (S = (C + 1%·mean diag·I)^{1/2} via sqrtm)."""
    parts = {}
    for name, dense in layers.items():
        matrix = dense.double().numpy()
        root = np.real(scipy.linalg.sqrtm(damped(grams[name]).numpy()))
        u, s, vh = np.linalg.svd(matrix @ root, full_matrices=False)
        parts[name] = (matrix, root, u, s, vh)

    def overall(ranks: dict[str, int]) -> float:
        num = den = 0.0
        for name, (matrix, root, u, s, vh) in parts.items():
            r = ranks[name]
            error = matrix - (u[:, :r] * s[:r]) @ vh[:r] @ np.linalg.inv(root)
            gram = grams[name].double().numpy()
            num += float(np.trace(error @ gram @ error.T))
            den += float(np.trace(matrix @ gram @ matrix.T))
        return (num / den) ** 0.5

    pooled = sorted(((float(sigma) ** 2, name) for name, part in parts.items() for sigma in part[3]), reverse=True)
    best = [name for _, name in pooled[: rank * len(layers)]]
    return overall({name: rank for name in layers}), overall({name: best.count(name) for name in layers})
