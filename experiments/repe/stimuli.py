"""Emotion scenarios in the style of TinyStories for the RepE experiment, written for it. Each
stimulus is "<Name> <event>. <She/He> felt": the reading token is the last one, where the story
model must already hold how the character feels. Events never name the emotion."""

NAMES = [("Lily", "She"), ("Tom", "He"), ("Sara", "She"), ("Ben", "He"), ("Mia", "She"), ("Tim", "He"),
         ("Anna", "She"), ("Jack", "He"), ("Lucy", "She"), ("Sam", "He")]

EVENTS = {
    "happy": [
        "got a new puppy for her birthday", "won the race at school", "found a big red ball in the park",
        "got a yummy cake from Mom", "played all day with her best friend", "saw a pretty rainbow in the sky",
        "got a shiny new bike", "went to the zoo with Dad", "made a new friend at the park",
        "got a hug from Grandma", "ate ice cream on a sunny day", "got a gift with a big bow",
        "built the tallest tower", "danced and sang at the party", "found her lost toy under the bed",
    ],
    "sad": [
        "lost her puppy in the rain", "fell and lost the race at school", "saw her red ball pop in the park",
        "dropped her cake on the floor", "had to say goodbye to her best friend", "saw the rain wash away her drawing",
        "broke her new bike", "could not go to the zoo with Dad", "had no friend to play with at the park",
        "missed Grandma who went far away", "dropped her ice cream on the ground", "got no gift at all",
        "saw her tower fall down", "was left alone at the party", "could not find her lost toy anywhere",
    ],
    "scared": [
        "heard a loud noise in the dark", "saw a big spider on the wall", "got lost in the big forest",
        "heard thunder in the night", "saw a shadow at the window", "was alone in the dark room",
        "saw a big dog growl at her", "heard a strange sound under the bed", "could not find Mom in the store",
        "saw a snake in the grass", "was stuck high up in the tree", "heard the wind howl outside",
        "saw a scary face in the dark", "fell into the cold deep water", "heard footsteps in the empty house",
    ],
    "angry": [
        "saw her brother break her toy", "was pushed by a mean boy", "had her cookie taken by a friend",
        "saw someone tear her drawing", "was told to stop playing for no reason", "saw her friend cheat in the game",
        "had her sandcastle kicked down", "was blamed for what she did not do", "had her ball stolen at the park",
        "saw a boy laugh at her dress", "had her book thrown in the mud", "was not let into the game",
        "saw her tower knocked over on purpose", "had her seat taken by a rude boy", "was called a bad name",
    ],
}


def stimulus(name: str, pron: str, event: str) -> str:
    """One scenario; 'her' in an event becomes 'his' for a boy."""
    if pron == "He":
        event = event.replace(" her ", " his ").replace(" her", " him") if event.endswith(" her") else \
            event.replace(" her ", " his ")
    return f"{name} {event}. {pron} felt"


def stimuli(emotion: str, events: range, names=NAMES) -> list[str]:
    """Scenarios of ``emotion`` for every name x event index (name-major)."""
    return [stimulus(n, p, EVENTS[emotion][e]) for n, p in names for e in events]
