"""Character and word error rates (edit distance over the reference length, corpus level)."""

from __future__ import annotations

from collections.abc import Sequence


def edit_distance(ref: Sequence[object], hyp: Sequence[object]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def error_counts(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, int]:
    """Summed character and word edit distances and reference lengths."""
    counts = {"char_errors": 0, "chars": 0, "word_errors": 0, "words": 0}
    for ref, hyp in zip(refs, hyps, strict=True):
        counts["char_errors"] += edit_distance(ref, hyp)
        counts["chars"] += len(ref)
        ref_words, hyp_words = ref.split(), hyp.split()
        counts["word_errors"] += edit_distance(ref_words, hyp_words)
        counts["words"] += len(ref_words)
    return counts


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate: total edit distance / total reference characters."""
    c = error_counts(refs, hyps)
    return c["char_errors"] / max(1, c["chars"])


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate on whitespace-separated words."""
    c = error_counts(refs, hyps)
    return c["word_errors"] / max(1, c["words"])
