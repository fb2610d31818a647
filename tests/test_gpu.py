"""CUDA checks of the APT model and trainer. They skip without a GPU; bench/gpu_check.sh runs them on one."""

import pytest
import torch

from apt_plugin_lm.model import APTConfig, APTLargeModel
from conftest import cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MODES = ["autopoietic", "sdpa"]


def model(mode):
    torch.manual_seed(0)
    m = APTLargeModel(APTConfig(vocab_size=100, d_model=128, num_heads=4, num_layers=2, max_seq_len=128,
                                attention=mode)).cuda()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".gate"):
                p.fill_(1.0)
    return m


@pytest.mark.parametrize("mode", MODES)
def test_causal_on_cuda_in_bf16(mode):
    m = model(mode).eval()
    ids = torch.randint(4, 100, (4, 96), device="cuda")
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 70:] = False
    with torch.autocast("cuda", dtype=torch.bfloat16):
        base = m(ids, attention_mask=mask).float()
        for t in (0, 31, 63, 90):
            edited = ids.clone()
            edited[:, t + 1] = (edited[:, t + 1] + 5) % 100
            out = m(edited, attention_mask=mask).float()
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-2, rtol=0)
            assert (out[0, t + 1:] - base[0, t + 1:]).abs().max() > 1e-2


@pytest.mark.parametrize("mode", MODES)
def test_bf16_training_steps_are_finite_on_cuda(mode):
    m = model(mode).train()
    optimizer = torch.optim.AdamW(m.parameters(), lr=1e-3)
    ids = torch.randint(0, 100, (8, 129), device="cuda")
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = m(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_pipeline_trains_on_cuda_in_bf16(tiny_pipeline):
    result = cli("run", str(tiny_pipeline), "--no-progress", "--set", "trainer.device=cuda",
                 "--set", "trainer.precision=bf16", "--set", "trainer.max_steps=20")
    assert result.returncode == 0, result.stderr
    assert "val loss" in result.stdout
