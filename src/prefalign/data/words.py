"""The small English vocabulary shared by the project's generated text.

One public home for the word list used by the bundled synthetic chats
(:mod:`prefalign.data.synthetic`, also the offline tokenizer's BPE corpus) and by the verifiable
instruction world (:mod:`prefalign.worlds.verifiable`): because the tokenizer learns its merges on
sentences built from these words, the merges shorten the world's sequences too.
"""

from __future__ import annotations

WORDS: tuple[str, ...] = (
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "lemon",
    "garden",
    "rocket",
    "silver",
    "candle",
    "mirror",
    "forest",
    "planet",
    "window",
    "violin",
    "pepper",
    "harbor",
    "meadow",
    "copper",
    "falcon",
)
