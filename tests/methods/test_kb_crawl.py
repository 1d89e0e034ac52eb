"""interpjax.methods.kb_crawl (LMCRAWL, M20) with scripted completion callables: the vote, abstentions,
greedy mode, parsing, the 2-hop expansion, scoring; the HTML page in headless Chromium; and
``LMComplete`` on a tiny random model (one batched generation per crawl step)."""

from __future__ import annotations

import re

import pytest

from browser import assert_rendered, render
from interpjax.methods import kb_crawl as kc

CAPITAL = kc.COUNTRY_RELATIONS["capital"]
NEIGHBOUR = kc.COUNTRY_RELATIONS["neighbour"]
# every paraphrase of the two relations used here as a pattern of the prompt's last question
QUESTIONS = [(re.compile(r"Q: " + re.escape(q).replace(re.escape("{x}"), "(.+?)") + r"\nA:$"), r.name)
             for r in (CAPITAL, NEIGHBOUR) for q in r.paraphrases]


def query(prompt):
    """(subject, relation) of a prompt's final question."""
    for pattern, rel in QUESTIONS:
        m = pattern.search(prompt)
        if m:
            return m.group(1), rel
    raise AssertionError(f"no known question ends {prompt[-80:]!r}")


class Scripted:
    """A ``Complete`` that answers from ``table`` {(subject, relation): [answers per sample]} ("Don't
    know" for anything else) and records every call."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, prompts, n_samples=1, temperature=0.0, max_new_tokens=12, seed=0):
        self.calls.append({"prompts": list(prompts), "n_samples": n_samples, "temperature": temperature})
        out = []
        for p in prompts:
            answers = self.table.get(query(p), ["Don't know"])
            out.append([answers[k % len(answers)] for k in range(n_samples)])
        return out


def test_parse_answer_splits_lists_and_normalises():
    assert kc.parse_answer(" France, Spain and Italy.", multi=True) == ["France", "Spain", "Italy"]
    assert kc.parse_answer("Germany; Austria & the Netherlands", multi=True) == ["Germany", "Austria",
                                                                                 "the Netherlands"]
    assert kc.parse_answer("France, france, FRANCE", multi=True) == ["France"]
    assert kc.parse_answer("Washington, D.C.") == ["Washington, D.C"]  # single-valued: not split (final "." cut)
    assert kc.parse_answer("Don't know") is None and kc.parse_answer("  i do not know.") is None
    assert kc.parse_answer("None", multi=True) == []
    assert kc.normalize("  The  Côte d'Ivoire ") == "cote divoire"
    assert kc.normalize("São Tomé") == "sao tome"


def test_the_vote_keeps_two_of_three_and_drops_one_of_three():
    v = kc.vote([["Paris"], ["paris"], ["Lyon"]], min_share=0.5)
    assert v["kept"] == [("Paris", 2)] and not v["abstain"] and v["n"] == 3
    v = kc.vote([["Paris"], None, None], min_share=0.5)
    assert v["abstain"] and v["kept"] == [] and v["n_dont_know"] == 2
    assert kc.vote([["A", "B"], ["B"], ["C"]], 0.0)["kept"] == [("B", 2), ("A", 1), ("C", 1)]  # no vote
    with pytest.raises(ValueError, match="min_share"):
        kc.vote([["A"]], 1.5)


def test_full_crawl_votes_over_samples_and_paraphrases():
    table = {("Atlantis", "capital"): ["Poseidonia", "Poseidonia", "Mud"]}
    c = Scripted(table)
    g = kc.crawl(c, "Atlantis", relations={"capital": CAPITAL}, hops=1, n_samples=3, n_paraphrases=1)
    assert [(t["object"], t["votes"], t["n_answers"]) for t in g.triples] == [("Poseidonia", 2, 3)]
    assert len(c.calls) == 1 and c.calls[0]["n_samples"] == 3 and c.calls[0]["temperature"] > 0
    assert "Don't know" in c.calls[0]["prompts"][0]  # abstention demonstrations in full mode


def test_dont_know_answers_are_abstentions_and_never_triples():
    c = Scripted({("Atlantis", "capital"): ["Don't know", "Don't know", "Mud"]})
    g = kc.crawl(c, "Atlantis", relations={"capital": CAPITAL}, hops=1, n_paraphrases=1)
    assert g.triples == () and g.abstained[0]["subject"] == "Atlantis" and g.abstained[0]["n_dont_know"] == 2
    c = Scripted({("Atlantis", "capital"): ["Don't know"]})
    g = kc.crawl(c, "Atlantis", relations={"capital": CAPITAL}, hops=1, mode="greedy")
    assert g.triples == () and len(g.abstained) == 1
    assert all("know" not in kc.normalize(t["object"]) for t in g.triples)


def test_greedy_asks_each_query_once_at_temperature_zero_without_abstention_demos():
    table = {("Atlantis", "capital"): ["Mud", "Poseidonia"], ("Atlantis", "neighbour"): ["Lemuria, Mu"],
             ("Lemuria", "capital"): ["Lem"], ("Mu", "capital"): ["Don't know"]}
    c = Scripted(table)
    g = kc.crawl(c, "Atlantis", hops=2, mode="greedy", relations={"capital": CAPITAL, "neighbour": NEIGHBOUR})
    prompts = [p for call in c.calls for p in call["prompts"]]
    queries = [query(p) for p in prompts]
    assert len(queries) == len(set(queries)) == 6  # 3 entities x 2 relations, each asked exactly once
    assert all(call["n_samples"] == 1 and call["temperature"] == 0.0 for call in c.calls)
    assert all("Don't know" not in p for p in prompts)
    assert {(t["subject"], t["object"]) for t in g.triples if t["relation"] == "capital"} == {("Atlantis", "Mud"),
                                                                                             ("Lemuria", "Lem")}


def test_two_hops_visit_the_objects_of_hop_one_and_not_beyond():
    table = {("A", "neighbour"): ["B, C"], ("B", "neighbour"): ["D"], ("C", "neighbour"): ["A, E"],
             ("D", "neighbour"): ["F"]}
    c = Scripted(table)
    g = kc.crawl(c, "A", hops=2, relations={"neighbour": NEIGHBOUR}, n_paraphrases=2, n_samples=1)
    asked = {query(p)[0] for call in c.calls for p in call["prompts"]}
    assert asked == {"A", "B", "C"} and len(c.calls) == 2  # one batched call per hop
    assert [(e["name"], e["hop"]) for e in g.entities] == [("A", 0), ("B", 1), ("C", 1)]
    assert {t["object"] for t in g.triples} == {"B", "C", "D", "A", "E"}  # D and E are reached, not crawled
    g1 = kc.crawl(Scripted(table), "A", hops=1, relations={"neighbour": NEIGHBOUR}, n_samples=1)
    assert [e["name"] for e in g1.entities] == ["A"] and {t["object"] for t in g1.triples} == {"B", "C"}
    g_cap = kc.crawl(Scripted(table), "A", hops=2, relations={"neighbour": NEIGHBOUR}, n_samples=1, max_expand=1)
    assert [e["name"] for e in g_cap.entities] == ["A", "B"]


def test_precision_against_a_small_gold_dict():
    triples = [{"subject": "France", "relation": "capital", "object": "Paris"},
               {"subject": "france", "relation": "capital", "object": "Lyon"},
               {"subject": "Spain", "relation": "neighbour", "object": "the Portugal"},
               {"subject": "Narnia", "relation": "capital", "object": "Cair Paravel"}]
    gold = {("france", "capital"): {"paris"}, ("spain", "neighbour"): {"portugal", "france"}}
    assert kc.score_triples(triples, gold) == [1, 0, 1, None]
    assert kc.precision(triples, gold) == pytest.approx(0.5)
    assert kc.precision(triples, gold, unverifiable="skip") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="unverifiable"):
        kc.precision(triples, gold, unverifiable="maybe")


def test_bad_settings_raise_naming_the_value():
    c = Scripted({})
    with pytest.raises(ValueError, match="mode must be one of"):
        kc.crawl(c, "A", mode="beam")
    with pytest.raises(ValueError, match="hops"):
        kc.crawl(c, "A", hops=0)
    with pytest.raises(ValueError, match="n_paraphrases=4"):
        kc.crawl(c, "A", n_paraphrases=4)
    with pytest.raises(ValueError, match="paraphrases 0..2"):
        kc.object_prompt(CAPITAL, "A", paraphrase=3)
    with pytest.raises(ValueError, match="slot"):
        kc.Relation("r", ("no slot",), (("a", "b"),))


def test_relation_generation_keeps_known_names():
    def complete(prompts, n_samples=1, temperature=0.0, max_new_tokens=12, seed=0):
        return [["capital, continent, anthem"] if "France" in p[-40:] else ["None"] for p in prompts]

    got = kc.propose_relations(complete, ["France", "the number two"], kc.COUNTRY_RELATIONS)
    assert got == {"France": ["capital", "continent"], "the number two": []}


def _graph():
    table = {("France", "capital"): ["Paris"], ("France", "neighbour"): ["Spain, <Belgium> & Co"],
             ("Spain", "capital"): ["Madrid"], ("Spain", "neighbour"): ["Portugal, France"]}
    return kc.crawl(Scripted(table), "France", hops=2, mode="greedy",
                    relations={"capital": CAPITAL, "neighbour": NEIGHBOUR})


def test_graph_html_renders_in_chromium_and_shows_the_nodes(tmp_path):
    g = _graph()
    assert {"France", "Paris", "Spain", "Madrid", "Portugal"} <= set(g.nodes())
    page = kc.graph_html(g, tmp_path / "crawl.html")
    text = page.read_text()
    assert "<script" not in text and "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "&lt;Belgium&gt;" in text and "<Belgium>" not in text
    r = render(page, tmp_path / "browser")
    assert_rendered(r, must_contain=["Knowledge-base crawl from France", "Paris", "Madrid", "Portugal",
                                     "&lt;Belgium&gt;"])
    page_width, window_width = r["widths"]
    assert page_width <= window_width, r["widths"]
    assert r["dom"].count("<circle") == len(g.nodes())


def test_figure_and_save_round_trip(tmp_path):
    g = _graph()
    png = g.plot(tmp_path / "g.png")
    assert png.is_file() and png.stat().st_size > 1000
    back = kc.CrawlGraph.load(g.save(tmp_path / "g.safetensors"))
    assert back.triples == tuple(g.triples) and back.seed_entity == "France" and back.n_calls == g.n_calls


class CharTokenizer:
    """One id per character of a small alphabet (ids 3..), 0 pad, 1 bos, 2 eos."""

    ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ?:,.'\n"
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __call__(self, text, add_special_tokens=True):
        ids = [3 + self.ALPHABET.index(c) for c in text if c in self.ALPHABET]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def decode(self, ids):
        return "".join(self.ALPHABET[i - 3] for i in ids if 3 <= i < 3 + len(self.ALPHABET))


def test_lm_complete_on_a_tiny_model_batches_one_generation_per_step(tiny_model):
    model = tiny_model("llama")[0].replace(tokenizer=CharTokenizer())
    lm = kc.LMComplete(model, pad_to=8)
    assert lm.stop_tokens == (2, 3 + CharTokenizer.ALPHABET.index("\n"))
    out = lm(["ab", "abcde", "x"], n_samples=2, temperature=1.0, max_new_tokens=4, seed=3)
    assert len(out) == 3 and all(len(o) == 2 and all(isinstance(s, str) and "\n" not in s for s in o) for o in out)
    assert lm.generate_calls == 1
    greedy = lm(["ab", "ab"], n_samples=1, temperature=0.0, max_new_tokens=4)
    assert greedy[0] == greedy[1] and lm.generate_calls == 2  # same prompt, argmax: same text
    rel = {"r": kc.Relation("r", ("{x}?", "{x}:"), (("a", "b"),), ("z",), multi=True, expand=True),
           "s": kc.Relation("s", ("{x}.", "{x},"), (("c", "d"),), ("z",))}  # short: the tiny model's n_ctx is 64
    g = kc.crawl(lm, "Ab", relations=rel, hops=2, n_samples=2, n_paraphrases=2, max_new_tokens=4)
    assert lm.generate_calls == 2 + g.n_calls and g.n_calls == (2 if len(g.entities) > 1 else 1)
    assert g.n_prompts == len(g.entities) * 2 * 2
    with pytest.raises(ValueError, match="n_samples"):
        lm(["ab"], n_samples=0)
    with pytest.raises(ValueError, match="needs a model with a tokenizer"):
        kc.LMComplete(model.replace(tokenizer=None))
    chunked = kc.LMComplete(model, max_batch=2, pad_to=8)
    assert len(chunked(["ab", "abc", "a"], n_samples=1, max_new_tokens=2)) == 3 and chunked.generate_calls == 2
