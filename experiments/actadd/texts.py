"""Sentences and prompts for the ActAdd experiment on SmolLM2, all written for this folder.

As in Turner et al. (who had GPT-4 summarise trends in the wedding industry and, for the
off-topic text, the shipping industry), the on-topic set is short sentences about weddings and the
off-topic set is short sentences about shipping and freight. ``NEUTRAL_PROMPTS`` open the steered
generations and mention neither topic; ``PILOT_PROMPTS`` are kept apart from them (used only to
look at outputs while writing the script, never scored). ``TOPIC_PATTERN`` is the topic test.
"""

ON_TOPIC = [
    "Many couples now choose small weddings with only close family and friends.",
    "The bride wore a simple white dress and carried a bouquet of roses.",
    "Wedding planners say outdoor ceremonies in gardens are more popular than ever.",
    "The groom and his best man arrived at the chapel an hour early.",
    "Guests threw rice as the newly married couple left the church.",
    "A wedding cake with three tiers was served after the first dance.",
    "Some couples spend a year saving money for their wedding day.",
    "The bridesmaids wore matching blue gowns and held small white flowers.",
    "Destination weddings on tropical beaches have become a growing trend.",
    "The couple exchanged rings and read the vows they had written.",
    "After the ceremony, the reception was held in a large hall.",
    "Many brides now rent their wedding dresses instead of buying them.",
    "The wedding photographer took pictures of the bride and groom by the lake.",
    "Engaged couples often visit several venues before booking one.",
    "The father of the bride gave a short and funny speech.",
    "Wedding invitations were sent out three months before the big day.",
    "The newlyweds left for their honeymoon in Italy the next morning.",
    "Rustic barn weddings with string lights are popular in the countryside.",
    "The flower girl scattered petals down the aisle before the bride walked in.",
    "Couples are asking guests to give to charity instead of buying wedding gifts.",
    "The priest pronounced them husband and wife, and everyone cheered.",
    "Many weddings now livestream the ceremony for relatives who cannot travel.",
    "The bride and groom cut the cake together while guests took photos.",
    "A wedding band played old love songs late into the night.",
    "The maid of honor helped the bride with her veil before the ceremony.",
    "Some couples choose a courthouse wedding followed by a party with friends.",
    "The average cost of a wedding has risen sharply over the last decade.",
    "He proposed to her on the beach, and they married the following summer.",
    "The wedding guests danced until midnight under a big white tent.",
    "Personalized wedding favors, like small jars of honey, delight many guests.",
    "The couple chose a spring wedding so the garden would be in bloom.",
    "At the rehearsal dinner, the families of the bride and groom met.",
    "Many brides and grooms hire a planner to handle every detail.",
    "The wedding ceremony lasted only twenty minutes, but the party lasted hours.",
    "Guests signed a wedding guestbook with messages for the happy couple.",
    "The bride's grandmother sewed lace from her own wedding dress into the gown.",
    "Same-day wedding videos are a new service offered by many studios.",
    "The best man lost the rings, but found them in his jacket pocket.",
    "Couples increasingly write their own vows rather than use traditional ones.",
    "The wedding reception menu included salmon, roast chicken and a vegetarian dish.",
    "Their wedding anniversary falls on the same day they first met.",
    "Many wedding venues are booked more than a year in advance.",
    "The bride tossed her bouquet, and her cousin caught it.",
    "Eco-friendly weddings use local flowers and avoid plastic decorations.",
]

OFF_TOPIC = [
    "Container ships carry most of the goods traded between continents.",
    "Freight rates rose sharply when several major ports became congested.",
    "The cargo vessel left the harbor loaded with steel and machinery.",
    "Shipping companies are ordering new ships that run on cleaner fuels.",
    "Dock workers unloaded thousands of containers from the ship overnight.",
    "Delays at the canal forced many tankers to take a longer route.",
    "The port authority is building new cranes to handle larger vessels.",
    "Rising fuel prices have increased the cost of ocean freight.",
    "Many logistics firms now track every container with satellite sensors.",
    "The tanker carried crude oil from the Gulf to refineries in Asia.",
    "Smaller shipping lines have merged to compete with global carriers.",
    "A storm at sea forced the freighter to wait outside the port.",
    "Customs officers inspected the containers before they could be released.",
    "Bulk carriers transport coal, grain and iron ore in their holds.",
    "The shipping industry is under pressure to cut its carbon emissions.",
    "Trucks lined up at the terminal to collect containers from the ship.",
    "Shortages of empty containers caused delays for exporters last year.",
    "The captain steered the cargo ship slowly through the narrow strait.",
    "Automated terminals use robots to move containers around the yard.",
    "Insurance costs for vessels rose after several attacks by pirates.",
    "The ship's crew spent nine months at sea before returning home.",
    "New trade agreements are expected to increase freight volumes in the region.",
    "Some ports charge extra fees when containers stay on the dock too long.",
    "Ocean carriers announced higher rates for routes across the Pacific.",
    "The freight forwarder booked space on a vessel leaving next week.",
    "Refrigerated containers keep fruit and meat cold during long voyages.",
    "A shortage of truck drivers slowed deliveries from the port to warehouses.",
    "The largest container ships can carry more than twenty thousand boxes.",
    "Shipping firms reported record profits during the surge in demand.",
    "Tugboats guided the massive vessel into its berth at the terminal.",
    "Rail lines connect the port to factories far inland.",
    "Many ships now sail more slowly to save fuel and reduce emissions.",
    "The cargo manifest listed electronics, furniture and clothing.",
    "Port strikes left dozens of ships waiting at anchor for days.",
    "Freight markets often fall when consumer spending slows down.",
    "The vessel was registered in Panama but owned by a Greek company.",
    "Inland barges move grain down the river to the export terminals.",
    "Shipbuilders in Korea and China build most of the world's new vessels.",
    "The warehouse near the port stores goods before they are shipped abroad.",
    "Air freight is faster than ocean shipping but costs far more.",
    "A damaged container fell overboard during heavy seas near the coast.",
    "Digital booking platforms let small exporters reserve space on ships.",
    "The harbor was dredged so that deeper ships could enter safely.",
    "Port congestion eased once more workers were hired for the night shift.",
]

# open-ended prompts that mention neither weddings nor shipping (steered generations)
NEUTRAL_PROMPTS = [
    "I went up to my friend and said",
    "Yesterday, my neighbor told me that",
    "The best thing about this weekend was",
    "She opened the letter and read",
    "Here is what happened last Saturday:",
    "My favorite memory from last year is",
    "The news this morning was about",
    "When we arrived at the hall, we saw",
    "I have been thinking a lot about",
    "The photo on the wall showed",
    "Everyone was excited because",
    "Let me tell you about the day when",
]

PILOT_PROMPTS = ["I think the most important thing is", "After dinner we talked about"]

# the topic test: a generation is on topic if its lower-cased text matches this (word starts, so
# "groom" does not match "grooming" and "marri" covers married / marriage)
TOPIC_PATTERN = r"\b(wedding|bride|bridal|bridesmaid|grooms?\b|marri|marry|honeymoon|vows?\b|fianc|newlywed)"
