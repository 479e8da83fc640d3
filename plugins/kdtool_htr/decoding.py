"""CTC decoding: greedy (best path) and prefix beam search with an optional character n-gram
language model built from the training transcriptions. Blank is label 0."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import torch

NEG_INF = -math.inf


def greedy_decode(
    log_probs: torch.Tensor, frames: Sequence[int] | torch.Tensor | None = None
) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks. ``log_probs`` (N, T, C)."""
    best = log_probs.argmax(dim=-1).cpu().numpy()
    out = []
    for k, row in enumerate(best):
        n = int(frames[k]) if frames is not None else len(row)
        ids: list[int] = []
        prev = 0
        for label in row[:n]:
            label = int(label)
            if label != prev and label != 0:
                ids.append(label)
            prev = label
        out.append(ids)
    return out


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


class CharNGramLM:
    """Character n-gram model with Witten-Bell interpolation (no external toolkit).

    Label ids are the model's classes (1..C-1); ``bos`` (0) pads the history at the start
    of a line and the end of a line is the label ``eos`` (= ``vocab_size``)."""

    def __init__(self, order: int, vocab_size: int) -> None:
        if order < 1:
            raise ValueError("an n-gram order must be >= 1")
        self.order = order
        self.vocab_size = vocab_size  # number of classes including the blank slot 0
        self.eos = vocab_size
        self.counts: dict[tuple[int, ...], dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self._cache: dict[tuple[tuple[int, ...], int], float] = {}

    def fit(self, lines: Iterable[Sequence[int]]) -> CharNGramLM:
        for ids in lines:
            seq = [0] * (self.order - 1) + list(ids) + [self.eos]
            for i in range(self.order - 1, len(seq)):
                for n in range(self.order):
                    self.counts[tuple(seq[i - n : i])][seq[i]] += 1
        self._cache.clear()
        return self

    def _prob(self, history: tuple[int, ...], label: int) -> float:
        if not history:
            table = self.counts.get((), {})
            total = sum(table.values())
            # Add-one unigram over the characters and eos, so unseen labels keep mass.
            return (table.get(label, 0) + 1) / (total + self.vocab_size)
        lower = self._prob(history[1:], label)
        table = self.counts.get(history)
        if not table:
            return lower
        total = sum(table.values())
        types = len(table)
        return (table.get(label, 0) + types * lower) / (total + types)

    def log_prob(self, history: Sequence[int], label: int) -> float:
        """log P(label | the last order-1 labels of history)."""
        h = tuple([0] * (self.order - 1) + list(history))[len(history) :] if self.order > 1 else ()
        key = (h, label)
        cached = self._cache.get(key)
        if cached is None:
            cached = math.log(self._prob(h, label))
            self._cache[key] = cached
        return cached

    def score(self, ids: Sequence[int]) -> float:
        """log P of a whole line, end of line included."""
        total = 0.0
        for i, label in enumerate([*ids, self.eos]):
            total += self.log_prob(ids[:i], label)
        return total


def beam_search(
    log_probs: torch.Tensor | np.ndarray,
    *,
    beam_width: int = 8,
    lm: CharNGramLM | None = None,
    lm_weight: float = 0.5,
    insertion_bonus: float = 0.0,
    prune: float = -10.0,
) -> list[int]:
    """CTC prefix beam search on one line's (T, C) log-probabilities.

    A prefix's score is its CTC log-probability plus ``lm_weight`` x LM log-probability plus
    ``insertion_bonus`` per character; labels whose frame log-probability is below ``prune``
    are skipped (they cannot change the result in practice and cost most of the time)."""
    lp = log_probs.detach().cpu().numpy() if isinstance(log_probs, torch.Tensor) else np.asarray(log_probs)
    # prefix -> (log P ending in blank, log P ending in non-blank)
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}
    lm_cache: dict[tuple[int, ...], float] = {(): 0.0}

    def lm_score(prefix: tuple[int, ...]) -> float:
        if lm is None:
            return 0.0
        s = lm_cache.get(prefix)
        if s is None:
            s = lm_score(prefix[:-1]) + lm_weight * lm.log_prob(prefix[:-1], prefix[-1])
            lm_cache[prefix] = s
        return s

    for t in range(lp.shape[0]):
        frame = lp[t]
        candidates = [c for c in np.flatnonzero(frame > prune).tolist() if c != 0]
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [NEG_INF, NEG_INF])
        blank = float(frame[0])
        for prefix, (pb, pnb) in beams.items():
            total = _logaddexp(pb, pnb)
            entry = nxt[prefix]
            entry[0] = _logaddexp(entry[0], total + blank)
            last = prefix[-1] if prefix else None
            if last is not None:
                # Repeated label without a blank in between stays the same prefix.
                entry[1] = _logaddexp(entry[1], pnb + float(frame[last]))
            for c in candidates:
                p = float(frame[c])
                extended = nxt[(*prefix, c)]
                if c == last:
                    extended[1] = _logaddexp(extended[1], pb + p)
                else:
                    extended[1] = _logaddexp(extended[1], total + p)

        def rank(item: tuple[tuple[int, ...], list[float]]) -> float:
            prefix, (pb, pnb) = item
            return _logaddexp(pb, pnb) + lm_score(prefix) + insertion_bonus * len(prefix)

        best = sorted(nxt.items(), key=rank, reverse=True)[:beam_width]
        beams = {p: (v[0], v[1]) for p, v in best}

    def final(item: tuple[tuple[int, ...], tuple[float, float]]) -> float:
        prefix, (pb, pnb) = item
        end = lm_weight * lm.log_prob(prefix, lm.eos) if lm is not None else 0.0
        return _logaddexp(pb, pnb) + lm_score(prefix) + end + insertion_bonus * len(prefix)

    return list(max(beams.items(), key=final)[0])
