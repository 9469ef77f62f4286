"""squad_f1 against the SQuAD v1.1 evaluation rules, on hypothesis-drawn answers fed in random batches."""

import warnings

import pytest
import squad_reference as ref
from hypothesis import given
from hypothesis import strategies as st

from ilit_metrics import SquadF1
from ilit_metrics.squad import normalize_answer

# words and marks that exercise every normalization rule: case, ASCII punctuation, articles as whole words
# only ("theatre", "anthem"), non-ASCII punctuation that is kept ("—", "«"), odd whitespace
TOKENS = ["the", "The", "THE", "a", "A", "an", "An", "cat", "Cat", "sat", "on", "mat", "theatre", "anthem", "it's",
          "U.S.", "—", "«", "»", "é", "Ünïcode", "ß", ",", ".", "!", "?", "(", ")", "'", '"', "-", "1,000",
          "3.5"]
SEPS = [" ", "", "  ", "\t", "\n", "\u00a0"]
TEXT = st.lists(st.tuples(st.sampled_from(TOKENS), st.sampled_from(SEPS)), max_size=8).map(
    lambda parts: "".join(t + s for t, s in parts))


@st.composite
def questions(draw):
    n = draw(st.integers(1, 25))
    qs = []
    for i in range(n):
        truths = draw(st.lists(TEXT, min_size=1, max_size=3))
        pred = draw(st.one_of(st.none(), TEXT, st.sampled_from(truths)))  # None: unanswered
        qs.append((f"q{i}", pred, truths))
    return qs, sorted(draw(st.lists(st.integers(0, n), max_size=3)))


def squad_json(qs):
    return [{"paragraphs": [{"qas": [{"id": qid, "answers": [{"text": t} for t in truths]}
                                     for qid, _, truths in qs]}]}]


@pytest.mark.parametrize("text, want", [
    ("The  Quick, brown fox!", "quick brown fox"),
    ("an apple", "apple"),
    ("theatre anthem", "theatre anthem"),
    ("a—b", "—b"),                    # the em dash is not ASCII punctuation, so "a" stands alone as a word
    ("U.S. 1,000", "us 1000"),
    ("\tA\u00a0cat\n", "cat"),
])
def test_normalization(text, want):
    assert normalize_answer(text) == want == ref.normalize(text)


@given(questions())
def test_dict_batches_equal_reference(data):
    qs, cuts = data
    want = ref.evaluate(squad_json(qs), {qid: p for qid, p, _ in qs if p is not None})
    m = SquadF1()
    bounds = [0, *cuts, len(qs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # unanswered questions
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            batch = qs[lo:hi]
            m.update({qid: p for qid, p, _ in batch if p is not None}, {qid: truths for qid, _, truths in batch})
    assert m.results() == want  # same rules, same order of summation: bit-for-bit equal
    assert m.result() == want["f1"]


@given(questions())
def test_list_batches_equal_reference(data):
    qs, cuts = data
    qs = [(qid, "" if p is None else p, truths) for qid, p, truths in qs]
    want = ref.evaluate(squad_json(qs), {qid: p for qid, p, _ in qs})
    m = SquadF1()
    bounds = [0, *cuts, len(qs)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        m.update([p for _, p, _ in qs[lo:hi]], [truths for _, _, truths in qs[lo:hi]])
    assert m.results() == want


def test_known_values():
    m = SquadF1()
    m.update({"1": "Barack Obama", "2": "the Eiffel Tower!", "3": "Paris"},
             {"1": ["President Barack Obama", "Obama"], "2": ["Eiffel tower"], "3": ["London"]})
    # q1: F1 max(0.8, 2/3) = 0.8, EM 0; q2: EM 1, F1 1; q3: 0
    assert m.results() == {"exact_match": 100.0 / 3, "f1": 100.0 * 1.8 / 3}
    with pytest.warns(RuntimeWarning, match="squad_f1: 1 labelled question"):
        m.update({"x": "extra ignored"}, {"4": "single string truth"})
    assert m.total == 4


def test_bad_input():
    m = SquadF1()
    with pytest.raises(ValueError, match="squad_f1: preds and labels must have the same length; got 2 preds and 1"):
        m.update(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="squad_f1: the labels of question 0 must be a non-empty list"):
        m.update(["a"], [[]])
    with pytest.raises(ValueError, match="squad_f1: the prediction for question 'q' must be an answer string"):
        m.update({"q": 3}, {"q": ["x"]})
    with pytest.raises(ValueError, match=r"squad_f1: preds and labels must be \{id: answer_text\}"):
        m.update({"q": "x"}, [["x"]])
    assert m.total == 0
    with pytest.raises(ValueError, match=r"squad_f1: result\(\) needs data"):
        m.result()
