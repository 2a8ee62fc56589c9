"""The paper's number check: what it explains, what it flags, and what it leaves out."""

from analysis.numbercheck import paper_text, shown_numbers, unexplained

RESULTS = [{"accuracy": 0.8392, "delta": -0.0312, "p": 0.99996, "small": 0.000123, "n_tokens": 24576,
            "prompt": "1 + 1 = 2. 2 + 2 = 4. 5 + 5 ="}]


def page(body: str) -> str:
    return f"<html><head><title>x 77.7</title></head><body>{body}</body></html>"


def test_numbers_from_the_results_are_explained_in_every_printed_form():
    html = page("<p>Accuracy 83.9% (0.84), change −0.031 or −3.1 points, P = 1 − 4.0 × 10<sup>−5</sup>, "
                "1.2 × 10<sup>−4</sup>, 24,576 latents, on <code>1 + 1 = 2. 2 + 2 = 4. 5 + 5 =</code>.</p>")
    assert unexplained(html, RESULTS) == []


def test_a_typed_number_is_flagged_as_written():
    html = page("<p>Accuracy 83.9%, as the study's 5.6% bound and an interval of 95% say.</p>")
    assert unexplained(html, RESULTS) == ["5.6", "95"]


def test_rounding_is_checked_at_the_precision_shown():
    assert unexplained(page("<p>83.92%</p>"), RESULTS) == []
    assert unexplained(page("<p>83.94%</p>"), RESULTS) == ["83.94"]


def test_cross_references_citations_references_and_the_appendix_are_left_out():
    html = page('<p>See <a href="#fig-x">Figure 12</a>, the study\'s Figure 7 and Tables 3 and 4 '
                '<span class="citation" data-cites="a">(Yamada 2026)</span>.</p>'
                '<div id="refs"><p>Olsson 2022, pp. 17-31</p></div>'
                '<section id="appendix-how-this-document-was-built"><p>torch 2.13.0</p></section>'
                '<svg><text>42.42</text></svg>')
    assert paper_text(html).split() == ["See", ",", "the", "study's", "and", "."]
    assert unexplained(html, RESULTS) == []


def test_identifiers_are_not_numbers():
    assert [t for _, _, t in shown_numbers("L20H5, MLP24, Q4_1, blocks.22.hook, #145, 1e5x")] == ["145"]


def test_typographic_slips_are_found():
    from analysis.numbercheck import typography

    html = page("<p>a change of -0.3, a bound of −0.000, after <code>2 + 2 = 4.</code>. Fine: −0.3, 0.0, x-1, ...</p>")
    assert [p.split(":")[0] for p in typography(html)] == [
        "a hyphen for a minus sign", "a negative zero", "a doubled full stop"]
