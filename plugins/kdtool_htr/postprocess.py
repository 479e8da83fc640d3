"""Text post-processors (the pluggable language-model step of HTR-JAND).

The paper corrects recognised lines with a T5 model; nothing may be downloaded here, so the
hook exists and the built-in choice is a small lexicon corrector (or none).

Contract for ``register_postprocessors`` entries used by the ``htr`` task: the registered
object is a factory ``factory(training_texts: list[str], **options)`` returning a callable
``corrector(texts: list[str]) -> list[str]``. A T5 plugin would load its local weights in the
factory and ignore ``training_texts``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from .metrics import edit_distance

Corrector = Callable[[list[str]], list[str]]
_TOKEN = re.compile(r"^(\W*)(.*?)(\W*)$")


def identity(training_texts: list[str]) -> Corrector:
    """No correction (``htr_identity``)."""
    return lambda texts: list(texts)


class LexiconCorrector:
    """Replace each word that is not in the training lexicon by the most frequent lexicon word
    within ``max_distance`` edits (ties: the more frequent word; none: keep it). Leading and
    trailing punctuation are kept apart; words shorter than ``min_length`` are left alone."""

    def __init__(self, training_texts: list[str], max_distance: int = 1, min_length: int = 4) -> None:
        counts: Counter[str] = Counter()
        for text in training_texts:
            for token in text.split():
                core = _TOKEN.match(token).group(2)  # type: ignore[union-attr]
                if core:
                    counts[core] += 1
        self.counts = counts
        self.max_distance = max_distance
        self.min_length = min_length
        self._by_length: dict[int, list[str]] = {}
        for word in counts:
            self._by_length.setdefault(len(word), []).append(word)

    def correct_word(self, word: str) -> str:
        if len(word) < self.min_length or word in self.counts or any(ch.isdigit() for ch in word):
            return word
        best, best_key = word, None
        for length in range(len(word) - self.max_distance, len(word) + self.max_distance + 1):
            for candidate in self._by_length.get(length, []):
                d = edit_distance(word, candidate)
                if d <= self.max_distance:
                    key = (d, -self.counts[candidate])
                    if best_key is None or key < best_key:
                        best, best_key = candidate, key
        return best

    def __call__(self, texts: list[str]) -> list[str]:
        out = []
        for text in texts:
            tokens = []
            for token in text.split(" "):
                m = _TOKEN.match(token)
                if m is None or not m.group(2):
                    tokens.append(token)
                    continue
                tokens.append(m.group(1) + self.correct_word(m.group(2)) + m.group(3))
            out.append(" ".join(tokens))
        return out


def lexicon(training_texts: list[str], max_distance: int = 1, min_length: int = 4) -> Corrector:
    """Snap out-of-lexicon words to a close training word (``htr_lexicon``)."""
    return LexiconCorrector(training_texts, max_distance=max_distance, min_length=min_length)
