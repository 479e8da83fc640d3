"""Transducer decoding over the three deploy graphs, and WER/CER.

The decoders only call ``encoder``-side outputs, ``decoder`` and ``joiner`` callables on CPU
tensors, so the same code decodes a PyTorch model and an ONNX Runtime session (what an app
does). Stateless prediction network: ``decoder(context (B, ctx)) -> (B, J)``. LSTM:
``decoder(token (B, 1), h, c) -> (out, h, c)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Graph = Callable[..., tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class DecoderInfo:
    blank: int
    context_size: int
    kind: str  # "stateless" or "lstm"
    state_dim: int = 0

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> DecoderInfo:
        post = metadata.get("postprocessing", {})
        return cls(
            blank=int(post.get("blank", 0)),
            context_size=int(post.get("context_size", 2)),
            kind=str(post.get("predictor", "stateless")),
            state_dim=int(post.get("state_dim", 0)),
        )


class _DecoderState:
    """Decoder inputs/outputs for a batch of hypotheses, for either predictor kind."""

    def __init__(self, decoder: Graph, info: DecoderInfo, batch: int) -> None:
        self.decoder, self.info = decoder, info
        if info.kind == "stateless":
            self.context = torch.full((batch, info.context_size), info.blank, dtype=torch.long)
            (self.out,) = decoder(self.context)[:1]
        else:
            self.token = torch.full((batch, 1), info.blank, dtype=torch.long)
            self.h = torch.zeros(1, batch, info.state_dim)
            self.c = torch.zeros(1, batch, info.state_dim)
            self.out, self.h, self.c = decoder(self.token, self.h, self.c)

    def advance(self, tokens: torch.Tensor, emit: torch.Tensor) -> None:
        """Feed ``tokens`` (B,) where ``emit`` (B,) is true; others keep their state."""
        if self.info.kind == "stateless":
            new_context = torch.cat([self.context[:, 1:], tokens[:, None]], 1)
            self.context = torch.where(emit[:, None], new_context, self.context)
            out = self.decoder(self.context)[0]
            self.out = torch.where(emit[:, None], out, self.out)
        else:
            # the LSTM output is what it produced after reading the last emitted token
            out, h, c = self.decoder(tokens[:, None], self.h, self.c)
            self.out = torch.where(emit[:, None], out, self.out)
            self.h = torch.where(emit[None, :, None], h, self.h)
            self.c = torch.where(emit[None, :, None], c, self.c)


LOOKAHEAD = 8


def greedy_search(
    encoder_out: torch.Tensor,
    lengths: torch.Tensor,
    decoder: Graph,
    joiner: Graph,
    info: DecoderInfo,
    max_symbols_per_frame: int = 3,
) -> list[list[int]]:
    """Batched greedy transducer search: at each frame emit the argmax until it is blank
    (or ``max_symbols_per_frame`` symbols). encoder_out (B, T, J), lengths (B,).
    One utterance goes through :func:`greedy_search_one` (fewer graph calls)."""
    if encoder_out.shape[0] == 1:
        return [
            greedy_search_one(encoder_out[0], int(lengths[0]), decoder, joiner, info, max_symbols_per_frame)
        ]
    return greedy_search_batched(encoder_out, lengths, decoder, joiner, info, max_symbols_per_frame)


def greedy_search_batched(
    encoder_out: torch.Tensor,
    lengths: torch.Tensor,
    decoder: Graph,
    joiner: Graph,
    info: DecoderInfo,
    max_symbols_per_frame: int = 3,
) -> list[list[int]]:
    """The frame-by-frame loop over a batch: one joiner call per frame and symbol, one
    decoder call per emission (what an app without kdtool's shortcuts does)."""
    batch, frames, _ = encoder_out.shape
    state = _DecoderState(decoder, info, batch)
    hyps: list[list[int]] = [[] for _ in range(batch)]
    for t in range(frames):
        alive = lengths > t
        if not bool(alive.any()):
            break
        enc_t = encoder_out[:, t]
        for _ in range(max_symbols_per_frame):
            logits = joiner(enc_t, state.out)[0]
            tokens = logits.argmax(-1)
            emit = alive & (tokens != info.blank)
            if not bool(emit.any()):
                break
            for b in torch.nonzero(emit).flatten().tolist():
                hyps[b].append(int(tokens[b]))
            state.advance(tokens, emit)
            alive = emit
    return hyps


def greedy_search_one(
    encoder_out: torch.Tensor,
    length: int,
    decoder: Graph,
    joiner: Graph,
    info: DecoderInfo,
    max_symbols_per_frame: int = 3,
    lookahead: int = LOOKAHEAD,
) -> list[int]:
    """Greedy search of one utterance, encoder_out (T, J), with the same result as the
    batched loop but far fewer graph calls (each costs a fixed overhead in Python):

    - the joiner runs on ``lookahead`` frames at once with the current decoder output, since
      that output only changes when a symbol is emitted: the first non-blank frame of the
      block is where the frame-by-frame loop would emit next, and the blanks before it are
      skipped in one call;
    - a stateless decoder's outputs are cached by context (a character model revisits the
      same few contexts all the time), so each distinct context runs the decoder once.
    """
    enc = encoder_out.reshape(-1, encoder_out.shape[-1])[:length]
    blank = info.blank
    hyp: list[int] = []
    stateless = info.kind == "stateless"
    cache: dict[tuple[int, ...], torch.Tensor] = {}
    context: tuple[int, ...] = (blank,) * info.context_size
    h = c = torch.zeros(0)

    def decoder_out_for(ctx: tuple[int, ...]) -> torch.Tensor:
        out = cache.get(ctx)
        if out is None:
            out = decoder(torch.tensor([ctx], dtype=torch.long))[0]
            cache[ctx] = out
        return out

    if stateless:
        dec = decoder_out_for(context)
    else:
        h = torch.zeros(1, 1, info.state_dim)
        c = torch.zeros(1, 1, info.state_dim)
        dec, h, c = decoder(torch.full((1, 1), blank, dtype=torch.long), h, c)
    frames = enc.shape[0]
    t = 0
    while t < frames:
        k = min(max(1, lookahead), frames - t)
        logits = joiner(enc[t : t + k], dec.expand(k, -1).contiguous())[0]
        tokens = logits.argmax(-1)
        hits = torch.nonzero(tokens != blank)
        if hits.numel() == 0:
            t += k
            continue
        t += int(hits[0, 0])
        token = int(tokens[int(hits[0, 0])])
        for emitted in range(1, max_symbols_per_frame + 1):
            hyp.append(token)
            if stateless:
                context = (*context[1:], token)
                dec = decoder_out_for(context)
            else:
                dec, h, c = decoder(torch.full((1, 1), token, dtype=torch.long), h, c)
            if emitted == max_symbols_per_frame:
                break
            token = int(joiner(enc[t : t + 1], dec)[0].argmax(-1)[0])
            if token == blank:
                break
        t += 1
    return hyp


def beam_search(
    encoder_out: torch.Tensor,
    length: int,
    decoder: Graph,
    joiner: Graph,
    info: DecoderInfo,
    beam: int = 4,
) -> list[int]:
    """Modified beam search (at most one symbol per frame, as in icefall/sherpa) for one
    utterance: encoder_out (1, T, J) or (T, J)."""
    enc = encoder_out.reshape(-1, encoder_out.shape[-1])[:length]
    hyps: dict[tuple[int, ...], float] = {(): 0.0}
    states: dict[tuple[int, ...], _DecoderState] = {(): _DecoderState(decoder, info, 1)}
    for t in range(enc.shape[0]):
        keys = list(hyps)
        dec_out = torch.cat([states[k].out for k in keys], 0)
        logp = torch.log_softmax(joiner(enc[t : t + 1].expand(len(keys), -1), dec_out)[0].float(), -1)
        scores = torch.tensor([hyps[k] for k in keys])[:, None] + logp
        top = torch.topk(scores.flatten(), min(beam, scores.numel()))
        new: dict[tuple[int, ...], float] = {}
        new_states: dict[tuple[int, ...], _DecoderState] = {}
        vocab = logp.shape[1]
        for score, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            k, tok = keys[flat // vocab], flat % vocab
            key = k if tok == info.blank else (*k, tok)
            if key in new:  # merge equal prefixes (log-add)
                new[key] = float(torch.logaddexp(torch.tensor(new[key]), torch.tensor(score)))
                continue
            new[key] = score
            if tok == info.blank:
                new_states[key] = states[k]
            else:
                st = _copy_state(states[k])
                st.advance(torch.tensor([tok]), torch.tensor([True]))
                new_states[key] = st
        hyps, states = new, new_states
    return list(max(hyps, key=lambda k: hyps[k]))


def _copy_state(state: _DecoderState) -> _DecoderState:
    new = object.__new__(_DecoderState)
    new.__dict__.update(state.__dict__)
    return new


# --------------------------------------------------------------------------- metrics


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rates(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """Corpus WER and CER (errors / reference words or characters)."""
    word_err = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps, strict=True))
    words = sum(len(r.split()) for r in refs)
    char_err = sum(edit_distance(list(r), list(h)) for r, h in zip(refs, hyps, strict=True))
    chars = sum(len(r) for r in refs)
    return {"wer": word_err / max(1, words), "cer": char_err / max(1, chars)}


def decode_batch(
    predictor: Any,
    enc: torch.Tensor,
    enc_lens: torch.Tensor,
    info: DecoderInfo,
    *,
    beam: int,
    max_symbols: int,
) -> list[list[int]]:
    """Token ids per utterance of a batch of encoder outputs, through a predictor's (a
    PyTorch model's or an artifact's) ``decoder`` and ``joiner`` graphs: beam search when
    ``beam`` > 0, else batched greedy search."""
    decoder, joiner = predictor.graphs["decoder"], predictor.graphs["joiner"]
    if beam > 0:
        return [
            beam_search(enc[b : b + 1], int(enc_lens[b]), decoder, joiner, info, beam)
            for b in range(enc.shape[0])
        ]
    return greedy_search(enc, enc_lens, decoder, joiner, info, max_symbols)
