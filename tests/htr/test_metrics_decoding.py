"""CER/WER by hand, greedy and beam decoding on hand-made posteriors, the n-gram LM."""

from __future__ import annotations

import math

import pytest
import torch
from kdtool_htr.decoding import CharNGramLM, beam_search, greedy_decode
from kdtool_htr.metrics import cer, edit_distance, wer
from kdtool_htr.postprocess import LexiconCorrector


def test_edit_distance_cer_wer() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert cer(["abcd", "xy"], ["abed", "xy"]) == pytest.approx(1 / 6)
    assert cer(["ab"], [""]) == 1.0
    assert wer(["the cat sat", "a dog"], ["the bat sat", "a dog barked"]) == pytest.approx(2 / 5)


def _posteriors(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows).log().unsqueeze(0)


def test_greedy_merges_repeats_drops_blanks_and_stops_at_valid_frames() -> None:
    # classes: 0 blank, 1 'a', 2 'b'
    lp = _posteriors(
        [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]
    )
    assert greedy_decode(lp) == [[1, 1, 2]]
    assert greedy_decode(lp, [3]) == [[1]]


def test_beam_search_sums_paths_where_greedy_cannot() -> None:
    # Best single path is blank-blank (0.36) but 'a' collects 0.6*0.4*2 + 0.4*0.4 = 0.64.
    lp = _posteriors([[0.6, 0.4, 0.0001], [0.6, 0.4, 0.0001]])
    assert greedy_decode(lp) == [[]]
    assert beam_search(lp[0], beam_width=4) == [1]
    # Wider beams never lose the best prefix on a tiny problem: equals exhaustive search.
    lp2 = torch.log_softmax(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), -1)
    assert beam_search(lp2, beam_width=64, prune=-100) == _exhaustive_best(lp2)


def _exhaustive_best(lp: torch.Tensor) -> list[int]:
    import itertools

    scores: dict[tuple[int, ...], float] = {}
    t, c = lp.shape
    for path in itertools.product(range(c), repeat=t):
        collapsed: list[int] = []
        prev = 0
        for label in path:
            if label != prev and label != 0:
                collapsed.append(label)
            prev = label
        p = math.exp(sum(float(lp[i, label]) for i, label in enumerate(path)))
        scores[tuple(collapsed)] = scores.get(tuple(collapsed), 0.0) + p
    return list(max(scores, key=scores.__getitem__))


def test_char_ngram_lm_is_normalised_and_steers_the_beam() -> None:
    lm = CharNGramLM(2, vocab_size=3).fit([[1, 2], [1, 2], [1, 2, 1, 2]])
    for history in ([], [1], [2], [2, 2]):
        total = sum(math.exp(lm.log_prob(history, c)) for c in (1, 2, lm.eos))
        assert total == pytest.approx(1.0)
    assert lm.log_prob([1], 2) > lm.log_prob([1], 1)
    # Acoustics are ambiguous between 'ab' and 'aa' in the 2nd symbol; the LM prefers 'ab'.
    lp = _posteriors([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05], [0.08, 0.52, 0.40]])
    assert beam_search(lp[0], beam_width=4) == [1, 1]
    assert beam_search(lp[0], beam_width=4, lm=lm, lm_weight=1.0) == [1, 2]


def test_lexicon_corrector_snaps_near_misses_only() -> None:
    fix = LexiconCorrector(["the morning train", "the letter"], max_distance=1, min_length=4)
    assert fix(["the mornlng train, 1234", "xyzzy letter"]) == ["the morning train, 1234", "xyzzy letter"]
