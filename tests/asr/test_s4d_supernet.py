"""S4D layer vs its recurrence, the export convolution vs the FFT form, weight sharing."""

from __future__ import annotations

import torch
from kdtool_asr.models import KernelConv, S4DBlock, Subnet, SupernetRNNT, fft_causal_conv, s4d_kernel


def _recurrence(block: S4DBlock, heads: int, x: torch.Tensor) -> torch.Tensor:
    """y_l = 2 Re(C h_l) + D x_l, h_l = exp(dt A) h_{l-1} + (exp(dt A) - 1)/A x_l, per channel."""
    d = heads * block.head_dim
    dt = block.log_dt[:heads].exp().double()
    a = torch.complex(-block.log_a_re[:heads].exp().double(), block.a_im[:heads].double())
    dta = (dt[:, None] * a).repeat_interleave(block.head_dim, 0)
    a_rep = a.repeat_interleave(block.head_dim, 0)
    c = torch.view_as_complex(block.c[:d].double().contiguous())
    b_bar = (torch.exp(dta) - 1) / a_rep
    h = torch.zeros(x.shape[0], d, dta.shape[1], dtype=torch.complex128)
    ys = []
    for step in range(x.shape[-1]):
        h = torch.exp(dta) * h + b_bar * x[:, :, step, None].double()
        ys.append(2 * (c * h).sum(-1).real + block.skip[:d].double() * x[:, :, step].double())
    return torch.stack(ys, -1)


def test_s4d_fft_matches_direct_recurrence() -> None:
    torch.manual_seed(0)
    block = S4DBlock(heads=3, head_dim=4, state_size=8, ffn=8)
    with torch.no_grad():
        block.log_dt.uniform_(-3, -1)  # larger steps than the init: a stronger test
    x = torch.randn(2, 8, 37)  # 2 heads of 4 channels (a subnet)
    with torch.no_grad():
        kernel = block.kernel(2, 37)
        fft = fft_causal_conv(x, kernel) + block.skip[:8, None] * x
    ref = _recurrence(block, 2, x)
    assert torch.allclose(fft.double(), ref, atol=1e-4), (fft.double() - ref).abs().max()


def test_export_conv_matches_fft_form_and_is_causal() -> None:
    torch.manual_seed(1)
    block = S4DBlock(heads=2, head_dim=4, state_size=8, ffn=8)
    x = torch.randn(3, 8, 50)
    with torch.no_grad():
        fft = fft_causal_conv(x, block.kernel(2, 50)) + block.skip[:8, None] * x
        conv = block.export_conv(2, 64)  # kernel longer than the input: exact
        assert isinstance(conv, KernelConv)
        out = conv(x)
        assert torch.allclose(out, fft, atol=1e-5)
        x2 = x.clone()
        x2[..., 30:] = 0  # future input does not change the past
        assert torch.allclose(conv(x2)[..., :30], out[..., :30], atol=1e-6)


def test_kernel_is_real_and_matches_formula_at_lag_zero() -> None:
    torch.manual_seed(2)
    log_dt = torch.tensor([-2.0])
    log_a_re = torch.tensor([[0.0]])
    a_im = torch.tensor([[1.0]])
    c = torch.tensor([[[0.5, -0.25]]])
    k = s4d_kernel(log_dt, log_a_re, a_im, c, 3, head_dim=1)
    a = complex(-1.0, 1.0)
    dt = torch.tensor(-2.0).exp().item()
    import cmath

    expected = [
        2 * (complex(0.5, -0.25) * (cmath.exp(dt * a) - 1) / a * cmath.exp(dt * a * lag)).real
        for lag in range(3)
    ]
    assert torch.allclose(k[0].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-6)


def _supernet() -> SupernetRNNT:
    torch.manual_seed(0)
    return SupernetRNNT(
        vocab_size=12,
        head_dim=4,
        max_heads=3,
        max_layers=3,
        max_ffn=16,
        state_size=4,
        front_channels=8,
        joiner_dim=8,
        predictor_dim=8,
        layer_choices=[1, 2, 3],
        head_choices=[1, 2, 3],
        ffn_choices=[8, 16],
    )


def test_subnet_uses_only_the_first_rows_and_columns() -> None:
    model = _supernet().train()
    sub = Subnet(layers=2, heads=2, ffn=8)
    x = torch.randn(2, 40, 80)
    lengths = torch.tensor([40, 31])
    y = torch.randint(1, 12, (2, 5))
    logits, _ = model(x, lengths, y, subnet=sub.to_dict())
    logits.sum().backward()
    d = 8
    # weights outside the slice receive no gradient: the subnet is a view of the supernet
    assert model.blocks[2].ff1.weight.grad is None or model.blocks[2].ff1.weight.grad.abs().sum() == 0
    g = model.blocks[0].ff1.weight.grad
    assert g[:8, :d].abs().sum() > 0 and g[8:].abs().sum() == 0 and g[:, d:].abs().sum() == 0
    assert model.front2.weight.grad[d:].abs().sum() == 0 and model.front2.weight.grad[:d].abs().sum() > 0
    assert model.blocks[0].log_dt.grad[2:].abs().sum() == 0
    assert model.enc_proj.weight.grad[:, d:].abs().sum() == 0


def test_extracted_subnet_equals_supernet_slice_and_batching_is_exact() -> None:
    model = _supernet().eval()
    sub = Subnet(layers=2, heads=2, ffn=8)
    x = torch.randn(3, 53, 80)
    lengths = torch.tensor([53, 40, 17])
    y = torch.randint(1, 12, (3, 4))
    with torch.no_grad():
        ref, enc_lens = model(x, lengths, y, subnet=sub.to_dict())
        small = SupernetRNNT(
            **model.subnet_options(
                {
                    "vocab_size": 12,
                    "head_dim": 4,
                    "state_size": 4,
                    "front_channels": 8,
                    "joiner_dim": 8,
                    "predictor_dim": 8,
                },
                sub,
            )
        )
        small.load_state_dict(model.extract(sub))
        out, _ = small.eval()(x, lengths, y)
        assert torch.allclose(ref, out, atol=1e-6)
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        # the third utterance alone (no padding) gives the same valid lattice
        alone, _ = model(x[2:3, :17], lengths[2:3], y[2:3], subnet=sub.to_dict())
    assert enc_lens.tolist() == [14, 10, 5]
    assert torch.allclose(alone[0], ref[2, :5], atol=1e-5)


def test_search_space_and_sampling_are_deterministic() -> None:
    model = _supernet()
    assert model.largest == Subnet(3, 3, 16) and model.smallest == Subnet(1, 1, 8)
    assert model.smallest < model.middle < model.largest
    assert len(model.all_subnets()) == 18
    a = [model.sample_subnet(torch.Generator().manual_seed(5)) for _ in range(3)]
    b = [model.sample_subnet(torch.Generator().manual_seed(5)) for _ in range(3)]
    assert a == b
