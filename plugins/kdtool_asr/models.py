"""The sliceable RNN-T supernet: S4D encoder, stateless (or LSTM) prediction network, joiner.

Encoder. A shared convolutional subsampling front (two stride-2 1-D convolutions over 80-dim
log-mels: 10 ms -> 40 ms frames) feeds ``max_layers`` pre-LayerNorm blocks of

    x = x + Dropout(GLU(W_o GELU(S4D(LN(x)))))      (multi-head diagonal SSM + gated output)
    x = x + Dropout(W_2 GELU(W_1 LN(x)))            (feed-forward)

and a final LayerNorm and projection to the joiner dimension.

How this maps to the paper's MH-SSM: the hidden channels are split into ``heads`` groups of
``head_dim`` channels; each head has its own state dynamics (a step size dt and a diagonal
complex state matrix A with ``state_size / 2`` conjugate pairs, S4D-Lin initialisation), and
each channel has its own output vector C and skip D, so every head is an independent SSM over
its channels. The gated output projection mixes the heads (the MH-SSM's inter-head mixing).
Causal by construction (no look-ahead), which also makes batched padding exact.

Supernet slicing. A subnet is ``(layers, heads, ffn)``: it runs the first ``layers`` blocks,
the first ``heads * head_dim`` hidden channels (the first rows/columns of every weight, the
first heads' SSM parameters) and the first ``ffn`` feed-forward units. The front and the
prediction network and joiner are shared whole (so T and the joiner interface match across
subnets). :meth:`SupernetRNNT.extract` copies a subnet's slices into a standalone model of
the same architecture whose maxima are the subnet's sizes (its config rebuilds it alone).

S4D kernels are computed in fp32 and applied with an FFT convolution zero-padded to 2L in
training; for export, :class:`KernelConv` applies a precomputed real kernel as a causal
depthwise 1-D convolution (complex tensors do not export portably), exact for sequences up
to the kernel length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, order=True)
class Subnet:
    """A point of the search space."""

    layers: int
    heads: int
    ffn: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def label(self) -> str:
        return f"L{self.layers}-H{self.heads}-F{self.ffn}"

    @classmethod
    def parse(cls, value: Subnet | dict[str, int] | Sequence[int] | None) -> Subnet | None:
        if value is None or isinstance(value, Subnet):
            return value
        if isinstance(value, dict):
            return cls(int(value["layers"]), int(value["heads"]), int(value["ffn"]))
        layers, heads, ffn = value
        return cls(int(layers), int(heads), int(ffn))


# --------------------------------------------------------------------------- S4D


def s4d_kernel(
    log_dt: torch.Tensor,
    log_a_re: torch.Tensor,
    a_im: torch.Tensor,
    c: torch.Tensor,
    length: int,
    head_dim: int,
) -> torch.Tensor:
    """Real convolution kernel (channels, length) of diagonal SSMs (ZOH, B = 1).

    ``log_dt`` (H,), ``log_a_re``/``a_im`` (H, N2) give per-head A = -exp(log_a_re) + i a_im;
    ``c`` (D, N2, 2) the per-channel complex C. K[d, l] = 2 Re(sum_n C_dn (exp(dt A_n) - 1) / A_n
    exp(dt A_n l)), the impulse response of h_l = exp(dt A) h_{l-1} + (exp(dt A) - 1)/A x_l,
    y_l = 2 Re(C h_l).
    """
    dt = log_dt.float().exp()  # (H,)
    a = torch.complex(-log_a_re.float().exp(), a_im.float())  # (H, N2)
    dta = dt[:, None] * a  # (H, N2)
    dta = dta.repeat_interleave(head_dim, dim=0)  # (D, N2)
    a_rep = a.repeat_interleave(head_dim, dim=0)
    cc = torch.view_as_complex(c.float().contiguous())  # (D, N2)
    coef = cc * (torch.exp(dta) - 1.0) / a_rep
    pos = torch.arange(length, device=log_dt.device, dtype=torch.float32)
    vander = torch.exp(dta[:, :, None] * pos)  # (D, N2, L)
    return 2.0 * torch.einsum("dn,dnl->dl", coef, vander).real


def fft_causal_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Causal convolution of x (B, D, L) with kernel (D, L): FFT zero-padded to 2L, in fp32."""
    length = x.shape[-1]
    n = 2 * length
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = torch.fft.rfft(x.float(), n=n)
        kf = torch.fft.rfft(kernel.float(), n=n)
        return torch.fft.irfft(xf * kf, n=n)[..., :length]


class KernelConv(nn.Module):
    """Export form of an S4D layer: causal depthwise Conv1d over a precomputed real kernel."""

    def __init__(self, kernel: torch.Tensor, skip: torch.Tensor) -> None:
        super().__init__()
        channels, length = kernel.shape
        # conv1d is cross-correlation: flip so that y_l = sum_j K[j] x_{l-j}
        self.register_buffer("weight", kernel.flip(-1).reshape(channels, 1, length).contiguous())
        self.register_buffer("skip", skip.reshape(1, channels, 1).contiguous())
        self.length = length

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, L)
        y = F.conv1d(F.pad(x, (self.length - 1, 0)), self.weight, groups=self.weight.shape[0])
        return y + self.skip * x


# --------------------------------------------------------------------------- sliced helpers


# A slice that is the whole layer calls the module itself (same arithmetic): a standalone
# subnet model, or the supernet's largest subnet, then runs plain modules, which is what
# quantization (kdtool.quant traces module calls) and ONNX Runtime's quantizer (weights that
# are not sliced at run time) need.


def _whole(module: nn.Module) -> nn.Module:
    """The layer itself, also inside a quantization-aware wrapper (kdtool.quant.QuantLayer)."""
    return getattr(module, "layer", module)


def _linear(x: torch.Tensor, layer: nn.Module, out: int, inp: int) -> torch.Tensor:
    whole = _whole(layer)
    if (out, inp) == tuple(whole.weight.shape):
        return layer(x)
    bias = whole.bias[:out] if whole.bias is not None else None
    return F.linear(x, whole.weight[:out, :inp], bias)


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm, dim: int) -> torch.Tensor:
    if dim == norm.normalized_shape[0]:
        return norm(x)
    return F.layer_norm(x, (dim,), norm.weight[:dim], norm.bias[:dim], norm.eps)


class S4DBlock(nn.Module):
    """One sliceable encoder block (multi-head S4D + gated projection, then feed-forward)."""

    def __init__(self, heads: int, head_dim: int, state_size: int, ffn: int) -> None:
        super().__init__()
        if state_size % 2:
            raise ValueError(f"state_size must be even (conjugate pairs), got {state_size}")
        d = heads * head_dim
        n2 = state_size // 2
        self.heads, self.head_dim, self.ffn = heads, head_dim, ffn
        self.norm1 = nn.LayerNorm(d)
        # S4D-Lin initialisation: dt log-uniform in [1e-3, 1e-1], A_n = -1/2 + i pi n.
        self.log_dt = nn.Parameter(torch.rand(heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        self.log_a_re = nn.Parameter(torch.full((heads, n2), math.log(0.5)))
        self.a_im = nn.Parameter(math.pi * torch.arange(n2, dtype=torch.float32).repeat(heads, 1))
        self.c = nn.Parameter(torch.randn(d, n2, 2) * math.sqrt(0.5))
        self.skip = nn.Parameter(torch.ones(d))
        self.out = nn.Linear(d, 2 * d)
        self.norm2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, ffn)
        self.ff2 = nn.Linear(ffn, d)

    def kernel(self, heads: int, length: int) -> torch.Tensor:
        d = heads * self.head_dim
        return s4d_kernel(
            self.log_dt[:heads], self.log_a_re[:heads], self.a_im[:heads], self.c[:d], length, self.head_dim
        )

    def export_conv(self, heads: int, length: int) -> KernelConv:
        d = heads * self.head_dim
        with torch.no_grad():
            return KernelConv(self.kernel(heads, length).detach(), self.skip[:d].detach().float())

    def ssm(self, x: torch.Tensor, heads: int, conv: KernelConv | None) -> torch.Tensor:
        """x (B, L, d) -> (B, L, d)."""
        d = heads * self.head_dim
        xt = x.transpose(1, 2)
        if conv is not None:
            y = conv(xt.float())
        else:
            y = fft_causal_conv(xt, self.kernel(heads, x.shape[1])) + self.skip[:d, None].float() * xt.float()
        return y.transpose(1, 2).to(x.dtype)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        heads: int,
        ffn: int,
        dropout: float,
        conv: KernelConv | None = None,
    ) -> torch.Tensor:
        d = heads * self.head_dim
        full = self.heads * self.head_dim
        h = self.ssm(_layer_norm(x, self.norm1, d), heads, conv)
        h = F.gelu(h)
        if d == full:
            h = F.glu(self.out(h), dim=-1)
        else:
            w, b = _whole(self.out).weight, _whole(self.out).bias
            gate_w = torch.cat([w[:d, :d], w[full : full + d, :d]], 0)
            gate_b = torch.cat([b[:d], b[full : full + d]], 0)
            h = F.glu(F.linear(h, gate_w, gate_b), dim=-1)
        x = x + F.dropout(h, dropout, self.training)
        h = _linear(F.gelu(_linear(_layer_norm(x, self.norm2, d), self.ff1, ffn, d)), self.ff2, d, ffn)
        x = x + F.dropout(h, dropout, self.training)
        return x * mask


# --------------------------------------------------------------------------- prediction networks


class StatelessPredictor(nn.Module):
    """Embedding plus a depthwise convolution over the last ``context_size`` tokens (icefall,
    sherpa-onnx). The blank id is the padding index (a zero embedding), so the start context
    ``[blank] * context_size`` equals the zero left-padding used in training."""

    kind = "stateless"

    def __init__(self, vocab_size: int, blank: int, dim: int, out_dim: int, context_size: int = 2) -> None:
        super().__init__()
        self.context_size = context_size
        self.blank = blank
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=blank)
        self.conv = nn.Conv1d(dim, dim, context_size, groups=dim, bias=False) if context_size > 1 else None
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, U) (sequence starting with blank) -> (B, U, out_dim), each position
        seeing the last ``context_size`` tokens up to and including itself."""
        emb = self.embedding(tokens)
        if self.conv is not None:
            emb = F.relu(self.conv(F.pad(emb.transpose(1, 2), (self.context_size - 1, 0))).transpose(1, 2))
        return self.proj(emb)

    def step(self, context: torch.Tensor) -> torch.Tensor:
        """context (B, context_size) -> (B, out_dim): the export/decoding interface."""
        emb = self.embedding(context)
        if self.conv is not None:
            emb = F.relu(self.conv(emb.transpose(1, 2))).squeeze(-1)
        else:
            emb = emb[:, -1]
        return self.proj(emb)


class LSTMPredictor(nn.Module):
    """Embedding + one-layer LSTM; decoding carries explicit (h, c) states."""

    kind = "lstm"

    def __init__(self, vocab_size: int, blank: int, dim: int, out_dim: int, context_size: int = 1) -> None:
        super().__init__()
        self.blank = blank
        self.context_size = 1
        self.dim = dim
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=blank)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(tokens))
        return self.proj(out)

    def step(
        self, token: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """token (B, 1), h/c (1, B, dim) -> (out (B, out_dim), h, c)."""
        out, (h2, c2) = self.lstm(self.embedding(token), (h, c))
        return self.proj(out[:, -1]), h2, c2


# --------------------------------------------------------------------------- supernet


class SupernetRNNT(nn.Module):
    """RNN-T whose encoder is a sliceable S4D supernet. ``subnet=None`` runs ``default_subnet``
    (the largest unless the config says otherwise)."""

    def __init__(
        self,
        vocab_size: int,
        blank: int = 0,
        num_mel_bins: int = 80,
        head_dim: int = 32,
        max_heads: int = 4,
        max_layers: int = 6,
        max_ffn: int = 256,
        state_size: int = 16,
        front_channels: int = 128,
        joiner_dim: int = 128,
        predictor_dim: int = 128,
        predictor: Literal["stateless", "lstm"] = "stateless",
        context_size: int = 2,
        layer_choices: list[int] | None = None,
        head_choices: list[int] | None = None,
        ffn_choices: list[int] | None = None,
        default_subnet: dict[str, int] | None = None,
        feature_mean: list[float] | None = None,
        feature_std: list[float] | None = None,
        max_frames: int = 2000,
    ) -> None:
        super().__init__()
        self.vocab_size, self.blank, self.num_mel_bins = vocab_size, blank, num_mel_bins
        self.head_dim, self.max_heads, self.max_layers, self.max_ffn = (
            head_dim,
            max_heads,
            max_layers,
            max_ffn,
        )
        self.joiner_dim = joiner_dim
        self.max_frames = max_frames
        self.layer_choices = sorted(layer_choices or [max_layers])
        self.head_choices = sorted(head_choices or [max_heads])
        self.ffn_choices = sorted(ffn_choices or [max_ffn])
        for name, values, top in (
            ("layer_choices", self.layer_choices, max_layers),
            ("head_choices", self.head_choices, max_heads),
            ("ffn_choices", self.ffn_choices, max_ffn),
        ):
            if not values or min(values) < 1 or max(values) > top:
                raise ValueError(f"{name} {values} must lie in [1, {top}]")
        self.default_subnet = Subnet.parse(default_subnet) or self.largest
        d = max_heads * head_dim
        mean = torch.tensor(feature_mean, dtype=torch.float32) if feature_mean else torch.zeros(num_mel_bins)
        std = torch.tensor(feature_std, dtype=torch.float32) if feature_std else torch.ones(num_mel_bins)
        if mean.numel() != num_mel_bins or std.numel() != num_mel_bins:
            raise ValueError(f"feature_mean/std need {num_mel_bins} values")
        self.register_buffer("feature_mean", mean)
        self.register_buffer("feature_inv_std", 1.0 / std.clamp_min(1e-5))
        self.front1 = nn.Conv1d(num_mel_bins, front_channels, 3, stride=2, padding=1)
        self.front2 = nn.Conv1d(front_channels, d, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(
            S4DBlock(max_heads, head_dim, state_size, max_ffn) for _ in range(max_layers)
        )
        self.norm_out = nn.LayerNorm(d)
        self.enc_proj = nn.Linear(d, joiner_dim)
        pred_cls = StatelessPredictor if predictor == "stateless" else LSTMPredictor
        self.predictor = pred_cls(vocab_size, blank, predictor_dim, joiner_dim, context_size)
        self.joiner_out = nn.Linear(joiner_dim, vocab_size)

    # ------------------------------------------------------------ search space

    @property
    def largest(self) -> Subnet:
        return Subnet(self.layer_choices[-1], self.head_choices[-1], self.ffn_choices[-1])

    @property
    def smallest(self) -> Subnet:
        return Subnet(self.layer_choices[0], self.head_choices[0], self.ffn_choices[0])

    @property
    def middle(self) -> Subnet:
        pick = [
            c[(len(c) - 1) // 2] if len(c) > 2 else c[0]
            for c in (self.layer_choices, self.head_choices, self.ffn_choices)
        ]
        mid = Subnet(*pick)
        if mid in (self.smallest,) and self.largest != self.smallest:
            pick = [c[len(c) // 2] for c in (self.layer_choices, self.head_choices, self.ffn_choices)]
            mid = Subnet(*pick)
        return mid

    def all_subnets(self) -> list[Subnet]:
        return [
            Subnet(a, b, c) for a in self.layer_choices for b in self.head_choices for c in self.ffn_choices
        ]

    def sample_subnet(self, generator: torch.Generator) -> Subnet:
        def pick(values: list[int]) -> int:
            return values[int(torch.randint(len(values), (1,), generator=generator, device=generator.device))]

        return Subnet(pick(self.layer_choices), pick(self.head_choices), pick(self.ffn_choices))

    def check_subnet(self, subnet: Subnet) -> Subnet:
        if not (
            1 <= subnet.layers <= self.max_layers
            and 1 <= subnet.heads <= self.max_heads
            and 1 <= subnet.ffn <= self.max_ffn
        ):
            raise ValueError(
                f"subnet {subnet} is outside this supernet (layers <= {self.max_layers}, heads <= {self.max_heads}, "
                f"ffn <= {self.max_ffn})"
            )
        return subnet

    def subnet_params(self, subnet: Subnet) -> int:
        """Parameters a standalone model of this subnet has (what :meth:`extract` keeps)."""
        return sum(v.numel() for k, v in self.extract(subnet).items() if not k.startswith("feature_"))

    # ------------------------------------------------------------ encoder

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames from feature frames: two stride-2 convolutions (ceil(ceil(L/2)/2))."""
        return torch.div(torch.div(lengths + 1, 2, rounding_mode="floor") + 1, 2, rounding_mode="floor")

    def encode(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        subnet: Subnet | None = None,
        dropout: float = 0.0,
        convs: list[KernelConv] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, T, mels) log-mel, lengths (B,) -> (B, T', joiner_dim), (B,)."""
        sub = self.check_subnet(subnet or self.default_subnet)
        d = sub.heads * self.head_dim

        def mask_for(n: torch.Tensor, length: int) -> torch.Tensor:
            return (torch.arange(length, device=n.device)[None, :] < n[:, None]).to(features.dtype)

        x = (features - self.feature_mean) * self.feature_inv_std
        x = x * mask_for(lengths, x.shape[1])[:, :, None]
        x = x.transpose(1, 2)  # (B, mels, T)
        len1 = torch.div(lengths + 1, 2, rounding_mode="floor")
        x = F.gelu(self.front1(x))
        x = x * mask_for(len1, x.shape[-1])[:, None, :]
        len2 = torch.div(len1 + 1, 2, rounding_mode="floor")
        front2 = _whole(self.front2)
        if d == front2.weight.shape[0]:
            x = F.gelu(self.front2(x))
        else:
            x = F.gelu(F.conv1d(x, front2.weight[:d], front2.bias[:d], stride=2, padding=1))
        mask = mask_for(len2, x.shape[-1])[:, :, None]
        x = x.transpose(1, 2) * mask  # (B, T', d)
        for i in range(sub.layers):
            conv = convs[i] if convs is not None else None
            x = self.blocks[i](x, mask, sub.heads, sub.ffn, dropout, conv)
        x = _layer_norm(x, self.norm_out, d)
        return _linear(x, self.enc_proj, self.joiner_dim, d), len2

    # ------------------------------------------------------------ joiner / training forward

    def joint(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        return self.joiner_out(torch.tanh(enc + dec))

    def forward(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        targets: torch.Tensor,
        subnet: Any = None,
        dropout: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lattice logits (B, T', U+1, V) and encoder lengths, for targets (B, U) padded with blank."""
        enc, enc_lens = self.encode(features, lengths, Subnet.parse(subnet), dropout)
        start = torch.full((targets.shape[0], 1), self.blank, dtype=targets.dtype, device=targets.device)
        dec = self.predictor(torch.cat([start, targets], 1))
        logits = self.joint(enc[:, :, None, :], dec[:, None, :, :])
        return logits, enc_lens

    # ------------------------------------------------------------ extraction

    def extract(self, subnet: Subnet) -> dict[str, torch.Tensor]:
        """A standalone state dict for ``subnet`` (fits :meth:`subnet_options`)."""
        sub = self.check_subnet(subnet)
        d = sub.heads * self.head_dim
        full = self.max_heads * self.head_dim
        out: dict[str, torch.Tensor] = {}
        for key, value in self.state_dict().items():
            v = value
            if key.startswith("blocks."):
                index = int(key.split(".")[1])
                if index >= sub.layers:
                    continue
                name = key.split(".", 2)[2]
                if name in ("log_dt", "log_a_re", "a_im"):
                    v = value[: sub.heads]
                elif name in (
                    "c",
                    "skip",
                    "norm1.weight",
                    "norm1.bias",
                    "norm2.weight",
                    "norm2.bias",
                    "ff2.bias",
                ):
                    v = value[:d]
                elif name == "out.weight":
                    v = torch.cat([value[:d, :d], value[full : full + d, :d]], 0)
                elif name == "out.bias":
                    v = torch.cat([value[:d], value[full : full + d]], 0)
                elif name == "ff1.weight":
                    v = value[: sub.ffn, :d]
                elif name == "ff1.bias":
                    v = value[: sub.ffn]
                elif name == "ff2.weight":
                    v = value[:d, : sub.ffn]
            elif key.startswith("front2."):
                v = value[:d]
            elif key.startswith("norm_out."):
                v = value[:d]
            elif key == "enc_proj.weight":
                v = value[:, :d]
            out[key] = v.detach().clone()
        return out

    def subnet_options(self, options: dict[str, Any], subnet: Subnet) -> dict[str, Any]:
        """Model options of a standalone model of ``subnet`` (from this model's options)."""
        return {
            **options,
            "max_layers": subnet.layers,
            "max_heads": subnet.heads,
            "max_ffn": subnet.ffn,
            "layer_choices": [subnet.layers],
            "head_choices": [subnet.heads],
            "ffn_choices": [subnet.ffn],
            "default_subnet": None,
        }


def asr_supernet_rnnt(**options: Any) -> SupernetRNNT:
    """Factory registered as ``asr_supernet_rnnt``."""
    return SupernetRNNT(**options)


ARCHITECTURES = {
    "asr_supernet_rnnt": (asr_supernet_rnnt, "RNN-T with a sliceable multi-head S4D supernet encoder (TODM)"),
}
