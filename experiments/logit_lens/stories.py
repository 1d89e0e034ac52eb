"""Simple TinyStories-like text for the lens experiments (there is no dataset on the machine):

- ``story_stream(seed)``: an endless, seeded generator of short template stories (names, pets,
  toys, places, feelings, a small problem and its resolution), in the style of TinyStories;
- ``corpus_stories()``: the handwritten stories in ``corpus.txt`` beside this file (written for
  this project, one story per paragraph), used as held-out text that no template produced.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

GIRLS = ["Lily", "Sue", "Mia", "Anna", "Lucy", "Emma", "Sara", "Amy", "Jane", "Kitty", "Ella", "Zoe"]
BOYS = ["Tom", "Ben", "Tim", "Max", "Sam", "Jack", "Leo", "Joe", "Bob", "Timmy", "Jake", "Ollie"]
ANIMALS = ["dog", "cat", "bird", "bunny", "frog", "duck", "puppy", "kitten", "bear", "fish", "mouse", "fox"]
TOYS = ["ball", "kite", "doll", "car", "truck", "teddy bear", "boat", "block", "book", "hat", "toy", "balloon"]
COLORS = ["red", "blue", "green", "yellow", "big", "little", "shiny", "soft", "pink", "happy"]
PLACES = ["park", "garden", "forest", "beach", "house", "yard", "pond", "school", "store", "hill"]
FEELINGS = ["happy", "sad", "scared", "excited", "angry", "surprised", "tired", "proud"]
VERBS = ["play", "run", "jump", "dance", "sing", "swim", "draw", "read", "climb", "walk"]
FOODS = ["cake", "apple", "cookie", "banana", "soup", "pie", "candy", "sandwich"]
MOMS = ["mom", "dad", "grandma", "grandpa", "friend", "teacher"]


def _child(r: random.Random):
    if r.random() < 0.5:
        return r.choice(GIRLS), "She", "she", "her", "girl"
    return r.choice(BOYS), "He", "he", "his", "boy"


def story(r: random.Random) -> str:
    """One short story drawn with the random generator ``r``."""
    name, He, he, his, kind = _child(r)
    His = his.capitalize()
    friend, _, _, _, _ = _child(r)
    animal, toy, toy2 = r.choice(ANIMALS), r.choice(TOYS), r.choice(TOYS)
    color, color2, place, place2 = r.choice(COLORS), r.choice(COLORS), r.choice(PLACES), r.choice(PLACES)
    verb, verb2, food, mom = r.choice(VERBS), r.choice(VERBS), r.choice(FOODS), r.choice(MOMS)
    feel, feel2 = r.choice(FEELINGS), r.choice(["happy", "glad", "proud", "excited"])
    openings = [
        f"Once upon a time, there was a little {kind} named {name}.",
        f"Once upon a time, there was a {color} {animal} named {name}.",
        f"One day, a little {kind} named {name} went to the {place}.",
        f"{name} was a {color} {kind} who liked to {verb}.",
        f"There was a little {kind} called {name}. {He} lived in a small house near the {place}.",
    ]
    middles = [
        f"{He} loved to {verb} with {his} {toy} every day.",
        f"One day, {he} saw a {color2} {animal} in the {place2}.",
        f"{He} wanted to {verb2} with {friend}, but {friend} was {feel}.",
        f"{His} {mom} gave {name} a {color} {toy2}.",
        f"{He} found a {toy} under a tree. It was {color2} and very pretty.",
        f"The {animal} said, \"Can I {verb} with you?\"",
        f"{name} said, \"Yes, let's {verb2} together!\"",
        f"They went to the {place2} and had a lot of fun.",
        f"Then, the {toy} fell into the water. {name} was very {feel}.",
        f"{He} asked {his} {mom} for help.",
        f"{name} and {friend} ate {food} and laughed.",
        f"It started to rain, so they ran back to the {place}.",
        f"{He} shared {his} {food} with the {animal}.",
        f"The {animal} was hungry, so {name} gave it some {food}.",
    ]
    endings = [
        f"{name} felt {feel2} and hugged {his} {mom}.",
        f"From that day on, {name} and the {animal} were best friends.",
        f"{name} learned that sharing is good. The end.",
        f"They played until the sun went down. {name} was very {feel2}.",
        f"{His} {mom} smiled and said, \"I am proud of you, {name}.\"",
    ]
    n_mid = r.randint(2, 5)
    return " ".join([r.choice(openings)] + r.sample(middles, n_mid) + [r.choice(endings)])


def story_stream(seed: int) -> Iterator[str]:
    """Endless seeded stream of template stories (different seeds give disjoint-looking streams)."""
    r = random.Random(seed)
    while True:
        yield story(r)


def corpus_stories() -> list[str]:
    """The handwritten held-out stories of ``corpus.txt`` (one story per blank-line separated paragraph)."""
    text = (Path(__file__).with_name("corpus.txt")).read_text()
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
