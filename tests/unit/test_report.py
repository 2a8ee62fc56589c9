"""The formatting of every number and token in the paper's prose and tables."""

import re

import pytest

from analysis.report import MINUS, ci, head, md_table, num, pct, plain, prob, quote_token, tok


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
    assert ci(0.12, 0.155) == "[12\\.0\\%, 15\\.5\\%]"  # markdown: the numbers escaped, the brackets too
    assert plain(ci(-0.012, 0.0, fmt=lambda x: num(x, 3))) == f"[{MINUS}0.012, 0.000]"


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


# --- results are data: markdown only through report's escaping functions -------------------

PAYLOAD = "x`<img src=x onerror=alert(1)>`{=html} [j](javascript:alert(1)) **b** $\\input{y}$ | \\"


def test_md_escapes_every_value_that_is_not_markdown_already():
    from analysis.report import Md, md

    made = md("{} and {} ({:.2f})", PAYLOAD, tok(" 6"), 0.5)
    assert isinstance(made, Md) and "`' 6'`" in made and "0\\.50" in made
    assert not re.search(r"(?<!\\)[<`$\[]", made.replace("`' 6'`", ""))  # every <, `, $ and [ escaped
    assert plain(made) == f"{PAYLOAD} and ' 6' (0.50)"


def test_joining_or_adding_plain_strings_to_markdown_escapes_them():
    from analysis.report import Md

    assert Md(", ").join([tok("a"), "*b*"]) == "`'a'`, \\*b\\*"
    assert Md("**x** ") + "<b>" == "**x** \\<b\\>" and "<b> " + Md("**x**") == "\\<b\\> **x**"


def test_markdown_in_an_f_string_is_refused_rather_than_silently_escaped_twice():
    with pytest.raises(TypeError, match="use report.md"):
        f"{tok(' 6')}"  # noqa: B018
    with pytest.raises(TypeError, match="use report.md"):
        "{}".format(tok(" 6"))


def test_table_cells_escape_plain_values_and_pipes_inside_code_spans():
    table = md_table(["h|x", "token"], [[PAYLOAD, tok("a|b")]])
    assert table.splitlines()[0] == "| h\\|x | token |"
    row = table.splitlines()[2]
    assert "`'a\\|b'`" in row and not re.search(r"(?<!\\)<", row)
    assert re.findall(r"(?<!\\)\|", row) == ["|"] * 3  # two cells: the payload's pipe is escaped


def test_a_plain_value_has_no_markdown_display_and_md_has_one():
    from analysis.report import esc

    assert esc(PAYLOAD)._repr_markdown_() == str(esc(PAYLOAD))
    assert not hasattr(plain(esc("x")), "_repr_markdown_")


def test_links_are_https_only_and_their_text_is_escaped():
    from analysis.report import url

    assert url("https://www.neuronpedia.org/gpt2-small/9-res-jb/1076", "1076") == (
        "[1076](https://www.neuronpedia.org/gpt2-small/9-res-jb/1076)")
    assert url("https://example.org/a", "*b*") == "[\\*b\\*](https://example.org/a)"
    assert url("javascript:alert(1)", "x") == "x" and url("javascript:alert(1)") == "`javascript:alert(1)`"


def test_relative_column_widths_are_the_rules_dashes():
    rule = md_table(["claim", "measured", "verdict"], [], "lll", widths=[3, 5, 1]).splitlines()[1]
    assert rule == "|:----|:------|:--|"
