"""Built-in facts for the knowledge-neuron experiment: (relation, subject, attribute) triples and
four paraphrase templates per relation. Written for this folder; the answer is the first token of
" " + attribute after a prompt that ends without a trailing space."""

from __future__ import annotations

TEMPLATES = {
    "capital": ["The capital of {s} is", "The capital city of {s} is", "The capital of {s} is the city of",
                "The city that serves as the capital of {s} is"],
    "language": ["The official language of {s} is", "People in {s} speak", "The main language spoken in {s} is",
                 "Q: What language is spoken in {s}?\nA:"],
    "continent": ["{s} is a country in", "{s} is located on the continent of", "{s} is a country on the continent of",
                  "{s} is part of the continent of"],
    "currency": ["The currency of {s} is the", "The currency used in {s} is the", "The national currency of {s} is the",
                 "The official currency of {s} is the"],
}

TRIPLES = [
    ("capital", "France", "Paris"), ("capital", "Japan", "Tokyo"), ("capital", "Italy", "Rome"),
    ("capital", "Germany", "Berlin"), ("capital", "Spain", "Madrid"), ("capital", "Russia", "Moscow"),
    ("capital", "China", "Beijing"), ("capital", "Egypt", "Cairo"), ("capital", "England", "London"),
    ("capital", "Greece", "Athens"), ("capital", "Portugal", "Lisbon"), ("capital", "Austria", "Vienna"),
    ("capital", "Ireland", "Dublin"), ("capital", "Norway", "Oslo"), ("capital", "Sweden", "Stockholm"),
    ("capital", "Finland", "Helsinki"), ("capital", "Denmark", "Copenhagen"), ("capital", "Poland", "Warsaw"),
    ("capital", "Hungary", "Budapest"), ("capital", "Thailand", "Bangkok"), ("capital", "South Korea", "Seoul"),
    ("capital", "Kenya", "Nairobi"), ("capital", "Argentina", "Buenos"), ("capital", "Peru", "Lima"),
    ("capital", "Cuba", "Havana"), ("capital", "Iran", "Tehran"), ("capital", "Iraq", "Baghdad"),
    ("capital", "Turkey", "Ankara"), ("capital", "Canada", "Ottawa"), ("capital", "Australia", "Canberra"),
    ("capital", "India", "New"), ("capital", "Mexico", "Mexico"), ("capital", "Belgium", "Brussels"),
    ("capital", "the Netherlands", "Amsterdam"), ("capital", "Switzerland", "Bern"),
    ("capital", "the Czech Republic", "Prague"), ("capital", "Vietnam", "Hanoi"), ("capital", "Indonesia", "Jakarta"),
    ("capital", "the Philippines", "Manila"), ("capital", "Chile", "Santiago"), ("capital", "Colombia", "Bog"),
    ("language", "France", "French"), ("language", "Germany", "German"), ("language", "Spain", "Spanish"),
    ("language", "Italy", "Italian"), ("language", "Brazil", "Portuguese"), ("language", "Japan", "Japanese"),
    ("language", "China", "Chinese"), ("language", "Russia", "Russian"), ("language", "Greece", "Greek"),
    ("language", "Poland", "Polish"), ("language", "Sweden", "Swedish"), ("language", "Turkey", "Turkish"),
    ("language", "Mexico", "Spanish"), ("language", "Portugal", "Portuguese"), ("language", "Korea", "Korean"),
    ("language", "the Netherlands", "Dutch"), ("language", "Egypt", "Arabic"), ("language", "Iran", "Persian"),
    ("language", "Israel", "Hebrew"), ("language", "Vietnam", "Vietnamese"), ("language", "Finland", "Finnish"),
    ("continent", "Kenya", "Africa"), ("continent", "Nigeria", "Africa"), ("continent", "Egypt", "Africa"),
    ("continent", "Brazil", "South"), ("continent", "Argentina", "South"), ("continent", "Japan", "Asia"),
    ("continent", "China", "Asia"), ("continent", "India", "Asia"), ("continent", "France", "Europe"),
    ("continent", "Germany", "Europe"), ("continent", "Italy", "Europe"), ("continent", "Canada", "North"),
    ("currency", "Japan", "yen"), ("currency", "the United States", "dollar"), ("currency", "England", "pound"),
    ("currency", "India", "rupee"), ("currency", "Russia", "ruble"), ("currency", "China", "yuan"),
    ("currency", "Mexico", "peso"), ("currency", "Germany", "euro"), ("currency", "France", "euro"),
    ("currency", "South Korea", "won"), ("currency", "Switzerland", "Swiss"),
]


def fact_prompts(relation: str, subject: str) -> list[str]:
    """The four paraphrase prompts of one fact."""
    return [t.format(s=subject) for t in TEMPLATES[relation]]
