"""CUDA: the random streams, exact resume, the analysis and decoding on the GPU. Skipped without a GPU;
the device choice itself ("auto") is tested on any machine."""
import pytest
import torch
from safetensors.torch import load_file

from difformer import DifformerError, precision
from difformer.generate import load
from difformer.train import Trainer, train
from fixtures_train import tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_device_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.resolve_device("auto") == torch.device("cpu")
    assert precision.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DifformerError, match="--device cuda: no CUDA device is available here"):
        precision.resolve_device("cuda")
    with pytest.raises(DifformerError, match="--device gpu0: not a torch device"):
        precision.resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision.resolve_device("auto") == torch.device("cuda")


def test_tf32_is_allowed_on_cuda_unless_fp32_is_asked_for():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        precision.allow_tf32(torch.device("cpu"), "bf16")
        precision.allow_tf32(torch.device("cuda"), "fp32")
        assert not torch.backends.cuda.matmul.allow_tf32
        precision.allow_tf32(torch.device("cuda"), "bf16")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_cpu_checkpoints_hold_no_cuda_random_state(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path / "r", max_updates=2, validate_every=2), device="cpu")
    saved = load_file(tmp_path / "r" / "checkpoints" / "update_0000002" / "trainer.safetensors")
    assert "rng" in saved and "rng_cuda" not in saved


def test_a_run_resumed_on_another_device_uses_that_devices_optimizer_kernel(tiny_data, tmp_path):
    """A checkpoint written on CUDA records fused AdamW in its param groups; resumed on the CPU it must not
    ask for the fused kernel (absent on CPU before torch 2.4)."""
    import json

    train(tiny_config(tiny_data, tmp_path / "r", max_updates=2, validate_every=2), device="cpu")
    state = tmp_path / "r" / "checkpoints" / "update_0000002" / "state.json"
    meta = json.loads(state.read_text())
    for group in meta["param_groups"]:
        group["fused"] = True  # as a CUDA run writes it
    state.write_text(json.dumps(meta))
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "r", max_updates=3, validate_every=2), resume=True,
                      device="cpu")
    assert all(g["fused"] == trainer.optimizer.defaults["fused"] for g in trainer.optimizer.param_groups)
    trainer.train()


@cuda
def test_validation_leaves_the_cuda_random_stream_where_it_was(tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "r"), device="cuda")
    torch.rand(3, device="cuda")
    before = torch.cuda.get_rng_state()
    trainer.validate()
    assert torch.equal(torch.cuda.get_rng_state(), before)


@cuda
def test_resume_on_cuda_restores_the_cuda_random_stream(tiny_data, tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(tiny_config(tiny_data, straight, max_updates=20), device="cuda")
    train(tiny_config(tiny_data, halves, max_updates=10), device="cuda")
    train(tiny_config(tiny_data, halves, max_updates=20), resume=True, device="cuda")
    a = load_file(straight / "checkpoints" / "update_0000020" / "trainer.safetensors")
    b = load_file(halves / "checkpoints" / "update_0000020" / "trainer.safetensors")
    assert torch.equal(a["rng_cuda"], b["rng_cuda"])
    wa = load_file(straight / "checkpoints" / "update_0000020" / "model.safetensors")
    wb = load_file(halves / "checkpoints" / "update_0000020" / "model.safetensors")
    # atomics in CUDA backward kernels may change the last bits (and Adam can amplify a near-zero gradient's
    # sign); another random stream, 10 updates of other timesteps and noise, changes far more
    assert all(torch.allclose(wa[k], wb[k], atol=5e-3) for k in wa)


@cuda
def test_a_cpu_run_resumes_on_cuda(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path / "r", max_updates=2, validate_every=2), device="cpu")
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "r", max_updates=4, validate_every=2), resume=True,
                      device="cuda")
    assert all(g["fused"] for g in trainer.optimizer.param_groups)
    trainer.train()
    assert trainer.state.update == 4


@cuda
def test_analysis_and_decoding_run_on_cuda(trained_model, tiny_data):
    from difformer.analyze import embedding_norms, trajectory

    pipe = load(trained_model, device="cuda", precision="fp32")
    norms = embedding_norms(pipe.model)
    assert norms["embedding"].shape == (pipe.model.cfg.vocab_size,)
    sources = pipe.encode((tiny_data.parent / "corpus" / "test.src").read_text().splitlines()[:10])
    refs = (tiny_data.parent / "corpus" / "test.tgt").read_text().splitlines()[:10]
    out = trajectory(pipe, sources, refs, steps=5)
    assert len(out["bleu"]) == 5
    cpu = load(trained_model, device="cpu", precision="fp32")
    same = sum(a == b for a, b in zip(pipe.decode_ids(sources, pipe.decode_config()),
                                      cpu.decode_ids(sources, cpu.decode_config())))
    assert same >= 8  # the same noise on both devices; TF32 may flip a near-tie token


@cuda
def test_noise_on_cuda_equals_noise_on_cpu():
    from difformer.diffusion.noise import candidate_keys, gaussian

    src = torch.arange(4, 28).view(8, 3)
    k = candidate_keys(src, src != 0, 1, 0)
    cpu = gaussian(k, 2, torch.full((8,), 10), (8, 10, 16))
    cuda = gaussian(k.cuda(), 2, torch.full((8,), 10), (8, 10, 16))
    assert cuda.is_cuda and torch.allclose(cpu, cuda.cpu(), atol=1e-5)
