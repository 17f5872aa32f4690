"""core.metrics: the Whisper normalizer, hand-checked WER/CER, the bootstrap interval and word diffs."""

from __future__ import annotations

import json
import math

import pytest

from core.metrics import Scores, normalize, score, word_diff


@pytest.mark.parametrize(
    "a, b",
    [
        ("Seven apples!", "7 apples"),
        ("in nineteen ninety nine", "in 1999"),
        ("one hundred and twenty three", "123"),
        ("Mr. Smith", "mister smith"),
        ("Dr. Who", "doctor who"),
        ("It's OK.", "it is ok"),
        ("won't", "will not"),
        ("Hello,   WORLD?!", "hello world"),
        ("uh, yes", "yes"),
    ],
)
def test_normalize_makes_equivalent_text_equal(a, b):
    assert normalize(a) == normalize(b)


def test_normalize_exact_outputs():
    assert normalize("Seven apples!") == "7 apples"
    assert normalize("Mr. Smith") == "mister smith"
    assert normalize("") == ""
    assert normalize("colour") != normalize("color")  # no British/American spelling map (see SPELLING)


def test_score_hand_computed():
    # utt a: "the cat sat on the mat" vs "the cat sit on mat" -> 1 substitution + 1 deletion, 6 words
    # utt b: "hello world" vs "hello big world" -> 1 insertion, 2 words
    s = score(
        ["The cat sat on the mat.", "Hello, world!"],
        ["the cat sit on mat", "hello big world"],
        ids=["a", "b"],
    )
    assert (s.substitutions, s.deletions, s.insertions) == (1, 1, 1)
    assert s.n_words == 8 and s.n_utterances == 2
    assert s.wer == pytest.approx(3 / 8)  # corpus level, not the mean of 2/6 and 1/2
    a, b = s.rows
    assert (a.id, a.n_words, a.substitutions, a.deletions, a.insertions) == ("a", 6, 1, 1, 0)
    assert a.wer == pytest.approx(2 / 6) and b.wer == pytest.approx(1 / 2)
    assert a.normalized_reference == "the cat sat on the mat" and a.reference == "The cat sat on the mat."
    # raw: "The"!="the", "mat."!="mat"... a: The/the sub, sat/sit sub, the del, mat./mat sub = 4;
    # b: 3 of 2 words
    assert s.raw_wer == pytest.approx((4 + 3) / 8)


def test_cer_hand_computed():
    # "abc" vs "abd": 1 substitution in 3 characters; "de" vs "de": none -> 1 / 5
    s = score(["abc", "de"], ["abd", "de"])
    assert s.cer == pytest.approx(1 / 5)
    assert s.wer == pytest.approx(1 / 2)


def test_perfect_and_normalized_match():
    s = score(["Seven apples!", "Mr. Smith is here"], ["7 apples", "mister smith is here"])
    assert s.wer == 0.0 and s.cer == 0.0 and s.wer_ci95 == (0.0, 0.0)
    assert s.raw_wer > 0


def test_empty_references():
    s = score(["hello there", "", "um"], ["hello there", "", "you"])
    assert s.n_words == 2
    assert s.insertions == 1 and s.wer == pytest.approx(1 / 2)  # the "you" still counts
    assert [r.wer for r in s.rows] == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="every reference is empty"):
        score(["", "uh"], ["x", ""])


def test_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="1 ids"):
        score(["a", "b"], ["a", "b"], ids=["x"])
    with pytest.raises(ValueError, match="no references"):
        score([], [])


def test_bootstrap_interval_contains_estimate_and_is_deterministic():
    refs = [" ".join(["the quick brown fox jumps over the lazy dog"] * (1 + i % 4)) for i in range(40)]
    hyps = [
        r if i % 3 else r.replace("quick", "quack", 1 + i % 2).replace("lazy ", "", 1)
        for i, r in enumerate(refs)
    ]
    s = score(refs, hyps)
    low, high = s.wer_ci95
    assert low < s.wer < high
    assert 0.0 <= low and high <= 1.0
    assert score(refs, hyps).wer_ci95 == (low, high)
    assert score(refs, hyps, seed=1).wer_ci95 != (low, high)


def test_to_dict_is_json_ready():
    s = score(["a b"], ["a c"], ids=["u1"])
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["wer"] == 0.5 and d["wer_ci95"] == [0.5, 0.5]
    assert d["rows"][0]["id"] == "u1" and d["rows"][0]["substitutions"] == 1
    assert isinstance(s, Scores) and not math.isnan(s.raw_wer)


def test_word_diff_ops():
    assert word_diff("The cat sat.", "the cat sit down") == [
        ("equal", "the", "the"),
        ("equal", "cat", "cat"),
        ("substitute", "sat", "sit"),
        ("insert", "", "down"),
    ]
    assert word_diff("a b c d", "a d") == [
        ("equal", "a", "a"),
        ("delete", "b", ""),
        ("delete", "c", ""),
        ("equal", "d", "d"),
    ]
    assert word_diff("Seven apples", "7 apples") == [("equal", "7", "7"), ("equal", "apples", "apples")]
    assert word_diff("", "") == []
    assert word_diff("", "thank you") == [("insert", "", "thank"), ("insert", "", "you")]


def test_word_diff_counts_agree_with_score():
    ref, hyp = "one two three four five six", "one too three for five six seven eight"
    ops = [op for op, _, _ in word_diff(ref, hyp)]
    row = score([ref], [hyp]).rows[0]
    assert ops.count("substitute") == row.substitutions
    assert ops.count("delete") == row.deletions
    assert ops.count("insert") == row.insertions


def test_by_length_scores_each_clip_length_bucket_on_its_own():
    from core.metrics import by_length

    rows = score(
        ["red green blue", "cat dog", "sun moon star sky", "tree"],
        ["red green blue", "cat", "sun moon star", "bush"],
    ).rows
    buckets = by_length(rows, [1.0, 3.0, 7.5, 45.0], [100.0, 300.0, 500.0, 900.0])
    assert [(b.bucket, b.clips, b.words) for b in buckets] == [
        ("≤ 3 s", 2, 5),
        ("3–10 s", 1, 4),
        ("> 30 s", 1, 1),
    ]
    assert [b.wer for b in buckets] == [1 / 5, 1 / 4, 1.0]
    assert [b.median_ms for b in buckets] == [200.0, 500.0, 900.0]  # the 10–30 s bucket is empty: left out
    assert by_length(rows, [1.0] * 4)[0].median_ms is None
    with pytest.raises(ValueError, match="must pair up"):
        by_length(rows, [1.0, 2.0])


def test_a_transcript_cut_from_a_decoding_loop_is_counted():
    from core.metrics import ends_in_repeat

    assert ends_in_repeat("go forward ten meters go forward ten meters go forward")  # cut mid-phrase
    assert ends_in_repeat("yes " * 6)
    assert not ends_in_repeat("the the the")  # too short to call a loop
    assert not ends_in_repeat("hello this is a test hello this is a test")  # said twice is speech
    scores = score(
        ["go forward ten meters", "go go go go go go go", "stop"],
        ["go forward ten meters go forward ten meters go forward", "go go go go go go go", "stop"],
    )
    assert [row.looped for row in scores.rows] == [True, False, False]  # the reference says it too
    assert scores.looped == 1


def test_packed_rows_attribute_errors_to_their_utterances_for_the_interval():
    from core.metrics import _split_errors

    parts = [["the cat sat", "on the mat", "it was warm"], ["a dog barked"]]
    references = [" ".join(p) for p in parts[:1]] + parts[1]
    hypotheses = ["the hat sat on mat it was very warm", "a dog barked"]
    packed = score(references, hypotheses, parts=parts)
    plain = score(references, hypotheses)
    assert packed.wer == plain.wer and packed.rows == plain.rows  # only the interval changes
    jiwer_words = __import__("jiwer").process_words(
        [normalize(r) for r in references], [normalize(h) for h in hypotheses]
    )
    units = _split_errors(jiwer_words.alignments[0], packed.rows[0], parts[0])
    assert units == [(1, 3), (1, 3), (1, 3)]  # hat for cat; "the" deleted; "very" inserted before warm
    assert packed.wer_ci95 != plain.wer_ci95  # resampled over 4 utterances, not 2 windows
    low, high = packed.wer_ci95
    assert 0 <= low <= packed.wer <= high <= 1


def test_packed_row_whose_parts_do_not_add_up_stays_one_unit():
    from core.metrics import _split_errors

    scores = score(["red green blue"], ["red green pink"])
    assert _split_errors([], scores.rows[0], ["red green", "blue black"]) == [(1, 3)]
    joined = score(["one two three"], ["one two three"], parts=[["one two", "three"]])  # "123" vs "12" "3"
    assert joined.rows[0].n_words == 1 and joined.wer_ci95 == (0.0, 0.0)
