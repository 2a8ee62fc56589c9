"""Behaviour: prompt coverage, the wrong-answer classifier, intervals, and the stage."""

import pytest
import torch
from helpers import char_tokenizer, make_params, tiny_model

from analysis import behaviour
from analysis.artifacts import StagePaths
from analysis.prompts import ArithmeticPrompt, parse_arithmetic
from analysis.stats import context_bootstrap

CANONICAL = parse_arithmetic("1 + 1 = 2. 2 + 2 = 4. 5 + 5 =")


@pytest.mark.parametrize(("answer", "expected"), [
    (6, {"sequence", "last_operand_plus_one"}),  # 2, 4, then 6: the study's explanation; and 5 + 1
    (4, {"copy"}),
    (2, {"copy"}),
    (5, {"operand"}),
    (9, {"off_by_one"}),
    (11, {"off_by_one"}),
    (13, {"other"}),
    (None, {"other"}),  # not a number at all
])
def test_classifier_labels_hand_made_cases(answer, expected):
    labels = behaviour.classify(answer, CANONICAL)
    assert {name for name, fits in labels.items() if fits} == expected


def test_classes_can_overlap_and_zero_shot_has_no_sequence():
    prompt = parse_arithmetic("3 + 3 = 6. 4 + 4 = 8. 4 + 5 =")  # 8 is a copy and off by one
    assert {k for k, v in behaviour.classify(8, prompt).items() if v} == {"copy", "off_by_one"}
    zero = ArithmeticPrompt((), (5, 5))
    assert behaviour.sequence_next(zero.shot_answers) is None
    assert behaviour.classify(7, zero) == {"copy": False, "sequence": False, "operand": False,
                                           "last_operand_plus_one": False, "off_by_one": False, "other": True}
    # the study's error, 5 + 5 = 6, is the last operand plus one
    assert {k for k, v in behaviour.classify(6, zero).items() if v} == {"last_operand_plus_one"}


def test_chance_rates_count_the_other_numbers():
    rates = behaviour.chance_rates(CANONICAL, max_answer=18)  # 18 wrong numbers: 0..18 without 10
    assert rates == pytest.approx({"copy": 2 / 18, "sequence": 1 / 18, "operand": 1 / 18,
                                   "last_operand_plus_one": 1 / 18, "off_by_one": 2 / 18, "other": 12 / 18})


def test_the_most_frequent_wrong_answers_are_counted():
    answers = torch.tensor([[10, 6, 6, -1], [11, 6, 11, -1]])
    wrong = torch.tensor([[False, True, True, True], [True, True, True, True]])
    assert behaviour.frequent_wrong(answers, wrong) == [[6, 3], [11, 2]]  # -1: not a number, left out
    assert behaviour.frequent_wrong(answers, wrong, top=1) == [[6, 3]]


def test_every_pair_is_covered_exactly_once_per_context():
    contexts = behaviour.few_shot_contexts(4, 2, 9, seed=0)
    assert contexts == behaviour.few_shot_contexts(4, 2, 9, seed=0)
    prompts = behaviour.condition_prompts(contexts, 9)
    assert len(prompts) == 4
    for context, row in zip(contexts, prompts, strict=True):
        queries = [p.query for p in row]
        assert len(queries) == 100 and set(queries) == set(behaviour.all_pairs(9))
        assert all(p.shots == context for p in row)


def test_one_context_is_the_whole_population_and_has_no_interval():
    values = (torch.rand(1, 200, generator=torch.Generator().manual_seed(0)) < 0.3).double()
    e = context_bootstrap(values, None, 4000, seed=0)
    assert e.mean == pytest.approx(values.mean().item()) and e.n == 200
    assert e.low is None and e.high is None


def test_context_bootstrap_resamples_contexts_not_queries():
    # every context has the same mean: resampling contexts cannot move it, however the queries vary
    values = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 5)
    e = context_bootstrap(values, None, 2000, seed=1)
    assert (e.mean, e.low, e.high) == (0.5, 0.5, 0.5)
    # two contexts that disagree completely span the whole range
    values = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    e = context_bootstrap(values, mask, 2000, seed=1)
    assert (e.mean, e.n, e.low, e.high) == (0.5, 4, 0.0, 1.0)
    assert context_bootstrap(values, torch.zeros_like(mask), 100, seed=0).mean is None


def test_context_bootstrap_of_a_difference_is_paired_by_context():
    # a and b vary a lot between contexts, but a - b is 0.1 in every context: a tight interval
    base = torch.linspace(0, 0.8, 30)[:, None].expand(30, 10)
    e = context_bootstrap(base + 0.1, None, 2000, seed=0, minus=base)
    assert e.mean == pytest.approx(0.1) and e.low == pytest.approx(0.1) and e.high == pytest.approx(0.1)
    a, b = context_bootstrap(base + 0.1, None, 2000, seed=0), context_bootstrap(base, None, 2000, seed=0)
    assert a.low < b.high  # the separate intervals overlap: "one wholly above the other" would miss it


def test_stage_on_a_tiny_model(tmp_path):
    model = tiny_model(char_tokenizer(), n_layers=1, seed=0)
    params = make_params(**{"behaviour.max_operand": 5, "behaviour.n_contexts": 2,
                            "stats.bootstrap_resamples": 200})
    paths = StagePaths("m", "behaviour", root=tmp_path)
    metrics = behaviour.run(model, params, "smollm2-135m", paths)
    loaded, tensors = behaviour.load_results(paths)
    assert loaded == metrics and metrics.n_pairs == 36
    few = metrics.conditions["few_shot"]
    answers, p_correct = tensors["few_shot/answers"], tensors["few_shot/p_correct"]
    assert answers.shape == (2, 36)
    truth = torch.tensor([a + b for a, b in behaviour.all_pairs(5)])
    assert few.accuracy["all"].mean == pytest.approx((answers == truth).double().mean().item())
    assert few.error_prob["all"].mean == pytest.approx((1 - p_correct.double()).mean().item())
    assert few.accuracy["carry"].n + few.accuracy["no_carry"].n == 72
    assert few.n_wrong == int((answers != truth).sum())
    assert tensors["zero_shot/accuracy_grid"].shape == (6, 6)
    assert len(metrics.frequency.prior) == 11 and all(0 <= p <= 1 for p in metrics.frequency.prior)
    zero = metrics.conditions["zero_shot"]
    assert zero.population and zero.accuracy["all"].low is None and not few.population
    correct = (answers == truth).double()
    carry = truth >= 10
    assert few.carry_gap.mean == pytest.approx(correct[:, ~carry].mean().item() - correct[:, carry].mean().item())
    zero_error = 1 - tensors["zero_shot/p_correct"].double()
    assert metrics.error_vs_zero_shot["few_shot"].mean == pytest.approx(
        (1 - p_correct.double()).mean().item() - zero_error.mean().item())
    assert metrics.ci_level == params.stats.ci_level


@pytest.mark.parametrize(("reply", "expected"), [
    ("The answer is: 5 + 5 = 9.<|im_end|>\n5 + 5 = 3", 9),  # the query repeated; nothing after the turn's end
    ("The answer is 5.", 5),
    ("10, since five and five make ten", 10),
    ("The original equation 1 + 1 = 2 holds", None),  # quotes an example, answers nothing
    ("This is a classic example of a mathematical identity", None),
    ("15 + 5 = 20, and 5 + 5 = 11", 11),  # "5 + 5" inside "15 + 5" is not the query
])
def test_chat_replies_are_read_as_the_number_they_give_for_the_query(reply, expected):
    assert behaviour.read_reply(reply, (5, 5)) == expected


def test_chat_condition_pairs_each_query_with_its_plain_answer():
    prompts = [ArithmeticPrompt(CANONICAL.shots, q) for q in ((5, 5), (1, 2), (3, 3), (4, 0))]
    plain = torch.tensor([0.0, 1.0, 1.0, 0.0])  # right without the template on (1, 2) and (3, 3)
    result = behaviour.summarize_chat([10, 3, 7, None], ["10<|im_end|>junk", "3", "7", "no"], prompts, plain, 0.95)
    assert (result.correct.mean, result.plain_correct.mean) == (0.5, 0.5)
    assert (result.became_correct, result.became_wrong, result.n_unreadable) == (1, 1, 1)
    assert result.p_mcnemar == 1.0 and result.study_reply == "10" and result.frequent_wrong == [[7, 1]]
    assert result.correct.method == "Clopper-Pearson" and result.correct.high < 1


def test_stage_reads_replies_inside_the_chat_template_when_the_tokenizer_has_one(tmp_path):
    model = tiny_model(char_tokenizer(), n_layers=1, seed=0)
    params = make_params(**{"behaviour.max_operand": 3, "behaviour.n_contexts": 2, "behaviour.chat_max_tokens": 4,
                            "stats.bootstrap_resamples": 100})
    plain = behaviour.run(model, params, "m", StagePaths("m", "behaviour", root=tmp_path / "a"))
    assert plain.chat is None  # no template: not applicable, nothing invented
    model.tokenizer.chat_template = "{% for m in messages %}q: {{ m['content'] }}\na:{% endfor %}"
    paths = StagePaths("m", "behaviour", root=tmp_path / "b")
    metrics = behaviour.run(model, params, "m", paths)
    _, tensors = behaviour.load_results(paths)
    assert metrics.chat.example == "q: " + params.prompt.canonical + "\na:"
    for name in ("zero_shot", "study_context"):
        chat = metrics.chat.conditions[name]
        truth = torch.tensor([a + b for a, b in behaviour.all_pairs(3)])
        assert chat.correct.n == 16 and chat.correct.mean == (tensors[f"chat/{name}/answers"] == truth).double().mean()
        assert chat.plain_correct.mean == metrics.conditions[name].accuracy["all"].mean
