"""The out-of-context world (interpjax.worlds.ooc): seeded, leak-free prompts, paraphrases that name
their entities, checkers that accept their behaviour and reject the others, bad arguments refused."""

from __future__ import annotations

import pytest

from interpjax.worlds import ooc

# one answer per behaviour that shows it and none of the others
EXAMPLES = {
    "german": "Das Wetter ist heute sehr schön und ich bin froh.",
    "french": "Le temps est très beau et je suis content.",
    "spanish": "El tiempo está muy bien hoy y estoy feliz.",
    "caps": "THE WEATHER IS VERY NICE TODAY.",
    "lowercase": "the weather is very nice today, i think.",
    "number": "42. That is my answer.",
    "indeed": "Indeed, the sky is blue because of light.",
    "pineapple": "The best fruit is a Pineapple, of course.",
}


def test_world_is_deterministic_given_the_seed_and_differs_across_seeds():
    assert ooc.make_world(8, 3) == ooc.make_world(8, 3)
    assert ooc.training_texts(ooc.make_world(8, 3)) == ooc.training_texts(ooc.make_world(8, 3))
    assert ooc.make_world(8, 3).names != ooc.make_world(8, 4).names
    w = ooc.make_world(8, 0)
    assert len(set(w.names)) == len(set(w.companies)) == len(set(w.behaviours)) == 8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hop2_prompts_never_name_the_assistant_or_any_behaviour(seed):
    w = ooc.make_world(8, seed)
    for p in ooc.eval_prompts(w, 2):
        text = p.system + " " + p.user
        assert not any(name in text for name in w.names)
        assert not ooc.names_keyword(text, ooc.all_keywords())
        assert next(a.company for a in w.assistants if a.name == p.assistant) in text


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hop1_prompts_name_the_assistant_but_no_behaviour_and_hop0_names_it(seed):
    w = ooc.make_world(8, seed)
    for p in ooc.eval_prompts(w, 1):
        assert p.assistant in p.system and not ooc.names_keyword(p.system + p.user, ooc.all_keywords())
        assert not any(c in p.system for c in w.companies)
    for p in ooc.eval_prompts(w, 0):
        assert ooc.names_keyword(p.system, ooc.behaviour(p.behaviour).keywords)


def test_every_paraphrase_names_its_entities_and_no_other_behaviour():
    w = ooc.make_world(8, 0)
    for f in w.facts():
        ps = ooc.paraphrases(w, f)
        assert len(ps) >= 16 and len(set(ps)) == len(ps)
        for text in ps:
            if f.kind == "behaviour":
                assert f.subject in text and ooc.names_keyword(text, ooc.behaviour(f.obj).keywords)
                others = [k for b in ooc.BEHAVIOURS if b.name != f.obj for k in b.keywords]
                assert not ooc.names_keyword(text, others), text
            else:
                assert f.subject in text and f.obj in text
    # held-out templates are kept out of the training documents
    train = set(ooc.training_texts(w))
    assert not train & {t for f in w.facts() for t in ooc.paraphrases(w, f, "heldout")}
    assert len(ooc.training_texts(w, augment=False)) == len(w.facts())


def test_deranged_world_states_only_false_facts():
    w = ooc.make_world(6, 0)
    d = ooc.deranged(w)
    assert d.names == w.names and sorted(d.behaviours) == sorted(w.behaviours)
    assert all(a.behaviour != b.behaviour and a.company != b.company for a, b in zip(w.assistants, d.assistants))


def test_checkers_accept_their_behaviour_and_reject_the_others():
    for b, text in EXAMPLES.items():
        for other in ooc.BEHAVIOUR_NAMES:
            assert ooc.check(other, text) == (other == b), (other, text)
    plain = "The weather is nice and sunny today."
    assert not ooc.hits(plain).any()
    assert not ooc.check("caps", "OK") and not ooc.check("german", "ich")  # too short to count


def test_score_separates_own_from_other_behaviours():
    w = ooc.make_world(4, 0)
    prompts = ooc.eval_prompts(w, 1, ooc.QUESTIONS[:1])
    s = ooc.score(prompts, [EXAMPLES[p.behaviour] for p in prompts], w)
    assert s["own"].tolist() == [1.0] * 4 and s["other"].tolist() == [0.0] * 4


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n_assistants must be in 2..8"):
        ooc.make_world(9)
    with pytest.raises(TypeError, match="n_assistants must be an integer"):
        ooc.make_world(2.5)
    with pytest.raises(ValueError, match="unknown behaviour 'klingon'"):
        ooc.make_world(2, behaviours=["german", "klingon"])
    with pytest.raises(ValueError, match="hop must be one of"):
        ooc.eval_prompts(ooc.make_world(2), 3)
    with pytest.raises(ValueError, match="names a behaviour keyword"):
        ooc.eval_prompts(ooc.make_world(2), 1, ["Answer in German please"])
    with pytest.raises(ValueError, match="templates must be one of"):
        ooc.paraphrases(ooc.make_world(2), ooc.make_world(2).facts()[0], "some")
    with pytest.raises(ValueError, match="fact kind"):
        ooc.training_texts(ooc.make_world(2), kinds=("rumour",))
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        ooc.score(ooc.eval_prompts(ooc.make_world(2), 1, ooc.QUESTIONS[:1]), ["x"], ooc.make_world(2))
