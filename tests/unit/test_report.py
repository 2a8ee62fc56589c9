"""The formatting of every number and token in the paper's prose and tables."""

import pytest

from analysis.report import MINUS, ci, head, md_table, num, pct, prob, quote_token, tok


@pytest.mark.parametrize(("value", "sig", "text"), [
    (0.8392, 2, "0.84"),
    (0.0691, 3, "0.0691"),
    (0.15, 3, "0.150"),
    (0.00042, 2, f"4.2 × 10^{MINUS}4^"),  # one minus sign everywhere
    (0.0, 2, "0"),
    (1.0, 2, "1.0"),
    (0.99996, 2, f"1 {MINUS} 4.0 × 10^{MINUS}5^"),
    (0.996, 2, f"1 {MINUS} 0.0040"),
])
def test_prob_keeps_significant_digits_and_never_rounds_to_certainty(value, sig, text):
    assert prob(value, sig) == text


@pytest.mark.parametrize(("value", "digits", "text"), [
    (-6.25, 2, f"{MINUS}6.25"),
    (7.384, 2, "7.38"),
    (-0.0004, 3, "0.000"),
    (-0.0004, 4, f"{MINUS}0.0004"),
])
def test_num_uses_a_minus_sign_and_no_negative_zero(value, digits, text):
    assert num(value, digits) == text


def test_percentages_and_intervals():
    assert pct(0.8392) == "83.9%"
    assert pct(-0.00001) == "0.0%"
    assert pct(-0.027) == f"{MINUS}2.7%"
    assert ci(0.12, 0.155) == "[12.0%, 15.5%]"
    assert ci(-0.012, 0.0, fmt=lambda x: num(x, 3)) == f"[{MINUS}0.012, 0.000]"


def test_tokens_show_their_spaces_and_newlines():
    assert quote_token(" 6") == "' 6'"
    assert quote_token("a\nb") == "'a\\nb'"
    assert tok(" 6") == "`' 6'`"
    assert tok("`") == "`` '`' ``"
    assert head(18, 6) == "L18H6"


def test_markdown_tables_align_numbers_right():
    table = md_table(["rank", "token"], [[1, tok(" 6")]], align="rl")
    assert table.splitlines() == ["| rank | token |", "|--:|:--|", "| 1 | `' 6'` |"]
    assert md_table(["a", "b", "c"], []).splitlines()[1] == "|:--|--:|--:|"
