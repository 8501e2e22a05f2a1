"""Every stored format on CUDA gives its CPU result: reconstruct, PEFT forward, merge_and_unload, fine-tune.

Marked ``cuda`` and skipped where CUDA is not available (run them with ``pytest -m cuda``;
``benchmarks/gpu_suite.sh`` does). Each case converts a real tiny PEFT LoRA, then runs the same
operation with the tensors on the CPU and on the GPU and compares the numbers: the GPU result
must live on the GPU and agree to float32 rounding.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import wavecompress as wc
from conftest import make_peft_lora, tiny_bert
from wavecompress.finetune import finetune
from wavecompress.methods import get_method

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")]

CUDA = torch.device("cuda")
# (label, method, reorder): every stored format, with and without row/column permutations.
FORMATS = [
    ("waveft", "waveft", True),
    ("waveft-plain", "waveft", False),
    ("wara", "wara", True),
    ("wara-plain", "wara", False),
    ("lora", "lora", False),
    ("waveft-seeded", "waveft-seeded", False),
]
IDS = [label for label, _, _ in FORMATS]
TOKENS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))


@pytest.fixture(autouse=True)
def exact_fp32():
    """No TF32 in matmuls here: the comparison is float32 against float32."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cuda")
    return make_peft_lora(root / "lora", target_modules=["query", "value", "intermediate.dense"])[0]


def converted(lora_dir: Path, tmp_path: Path, method: str, reorder: bool) -> tuple[wc.CompressedAdapter, Path]:
    result = wc.compress(lora_dir, budget=300, method=method, reorder=reorder)
    return result, result.save(tmp_path / "out")


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("label,method,reorder", FORMATS, ids=IDS)
def test_reconstruct_on_cuda_matches_the_cpu(lora_dir: Path, tmp_path: Path, label: str, method: str, reorder: bool) -> None:
    result, _ = converted(lora_dir, tmp_path, method, reorder)
    reconstruct = get_method(method).reconstruct
    for layer in result.layers:
        on_cpu = reconstruct(layer.tensors, layer.meta, layer.shape)
        on_gpu = reconstruct({k: v.to(CUDA) for k, v in layer.tensors.items()}, layer.meta, layer.shape)
        if layer.tensors:
            assert on_gpu.device.type == "cuda", (label, layer.name)
        assert on_gpu.shape == on_cpu.shape and float(on_cpu.abs().max()) > 0
        assert max_relative(on_gpu, on_cpu) < 1e-5, (label, layer.name)


@pytest.mark.parametrize("label,method,reorder", FORMATS, ids=IDS)
def test_peft_forward_and_merge_on_cuda_match_the_cpu(lora_dir: Path, tmp_path: Path, label: str, method: str, reorder: bool) -> None:
    from peft import PeftModel

    _, out = converted(lora_dir, tmp_path, method, reorder)
    outputs, merged_weights = {}, {}
    for device in ("cpu", "cuda"):
        model = PeftModel.from_pretrained(tiny_bert(), str(out)).eval().to(device)
        with torch.no_grad():
            outputs[device] = model(input_ids=TOKENS.to(device)).last_hidden_state
            plain = tiny_bert()(input_ids=TOKENS).last_hidden_state
        merged = model.merge_and_unload()
        merged_weights[device] = {name: p.detach() for name, p in merged.named_parameters()}
        with torch.no_grad():
            after = merged(input_ids=TOKENS.to(device)).last_hidden_state
        assert max_relative(after, outputs[device]) < 1e-5, (label, device)
    assert outputs["cuda"].device.type == "cuda"
    assert float((outputs["cpu"] - plain).abs().max()) > 1e-3  # the adapter really changes the outputs
    assert max_relative(outputs["cuda"], outputs["cpu"]) < 1e-5, label
    for name, weight in merged_weights["cpu"].items():
        assert max_relative(merged_weights["cuda"][name], weight) < 1e-6, (label, name)


@pytest.mark.parametrize("label,method,reorder", FORMATS, ids=IDS)
def test_a_few_finetune_steps_on_cuda_match_the_cpu(lora_dir: Path, tmp_path: Path, label: str, method: str, reorder: bool) -> None:
    from test_finetune import texts, tiny_classifier, train_lora, word_tokenizer

    tokenizer = word_tokenizer()
    teacher = train_lora(tmp_path / "teacher", tokenizer, texts(64, seed=0), steps=5)
    compressed = wc.compress(teacher, budget=300, method=method, reorder=reorder)
    held_out = [t for t, _ in texts(32, seed=1)]
    runs = {device: finetune(compressed, tiny_classifier(), tokenizer, held_out, steps=3, lr=2e-3, batch_size=8,
                                keep_best=False, device=device, mixed_precision=False, progress=False)
            for device in ("cpu", "cuda")}
    assert runs["cuda"].settings["device"].startswith("cuda")
    assert runs["cuda"].losses == pytest.approx(runs["cpu"].losses, rel=1e-4), label
    for gpu_layer, cpu_layer, start in zip(runs["cuda"].layers, runs["cpu"].layers, compressed.layers):
        for key, value in cpu_layer.tensors.items():
            if not value.is_floating_point():
                assert torch.equal(gpu_layer.tensors[key], value)
                continue
            moved = float((value - start.tensors[key]).abs().median())
            assert moved > 1e-4, (label, key)  # training really moved the values
            # Adam moves every value by about lr per step; CPU/GPU rounding shows only far below that.
            assert float((gpu_layer.tensors[key] - value).abs().max()) < 5e-4, (label, cpu_layer.name, key)


@pytest.mark.parametrize("shape,levels,permuted,k", [
    ((64, 96), (1, 1), False, 300),
    ((256, 512), (5, 5), True, 3000),
    ((4096, 4096), (5, 5), True, 3000),
    ((11008, 4096), (1, 1), False, 450_000),
])
def test_triton_kernels_on_cuda_match_the_torch_reference(shape, levels, permuted, k) -> None:
    pytest.importorskip("triton")
    from wavecompress.kernels import spectrum_grad_reference, synthesis_reference
    from wavecompress.kernels.haar_triton import spectrum_grad_triton, synthesis_triton

    generator = torch.Generator().manual_seed(k)
    n = shape[0] * shape[1]
    indices = torch.randperm(n, generator=generator)[:k].sort().values.to(torch.int32).to(CUDA)
    values = torch.randn(k, generator=generator).to(CUDA)
    rows = torch.randperm(shape[0], generator=generator).to(torch.int16).to(CUDA) if permuted else None
    cols = torch.randperm(shape[1], generator=generator).to(torch.int16).to(CUDA) if permuted else None
    expected = synthesis_reference(values, indices, shape, levels, rows, cols)
    got = synthesis_triton(values, indices, shape, levels, rows, cols)
    assert got.device.type == "cuda" and max_relative(got, expected) < 1e-5
    grad = torch.randn(shape, generator=generator).to(CUDA)
    expected_grad = spectrum_grad_reference(grad, indices, levels, rows, cols)
    assert max_relative(spectrum_grad_triton(grad, indices, shape, levels, rows, cols), expected_grad) < 1e-5
