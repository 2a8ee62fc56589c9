"""make verify's paper check: the printed numbers that differ between two builds."""

from analysis import verify


def _html(body: str) -> str:
    return f"<html><body><main><p>{body}</p></main></body></html>"


def test_changed_printed_numbers_are_named_with_the_words_before_them():
    before = _html("The SAE explains 97.6% of the variance over 4,032 tokens; L0 is 32.")
    after = _html("The SAE explains 97.5% of the variance over 4,032 tokens; L0 is 32.")
    [change] = verify.changed_numbers(before, after)
    assert change == "…The SAE explains 97.6 here, 97.5 recomputed"
    assert verify.changed_numbers(before, before) == []


def test_a_number_that_appears_or_vanishes_is_named_too():
    before = _html("Two heads: L14H1 and L18H6, effect 0.5.")
    after = _html("Two heads: L14H1 and L18H6, effect 0.5 and 0.7.")
    [change] = verify.changed_numbers(before, after)
    assert "(none) here, 0.7 recomputed" in change
