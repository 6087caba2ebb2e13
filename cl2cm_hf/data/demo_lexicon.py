"""Words of the demo world in English, German and French, with what agreement needs (gender,
inflection classes) and the near synonyms the MT noise model may substitute."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Noun:
    en: str
    de: str
    de_gender: str  # "m", "f", "n"
    fr: str
    fr_gender: str  # "m", "f"
    animate: bool = False


NOUNS = {
    n.en: n
    for n in (
        Noun("dog", "Hund", "m", "chien", "m", True),
        Noun("cat", "Katze", "f", "chat", "m", True),
        Noun("horse", "Pferd", "n", "cheval", "m", True),
        Noun("bird", "Vogel", "m", "oiseau", "m", True),
        Noun("cow", "Kuh", "f", "vache", "f", True),
        Noun("car", "Auto", "n", "voiture", "f"),
        Noun("house", "Haus", "n", "maison", "f"),
        Noun("ball", "Ball", "m", "balle", "f"),
        Noun("tree", "Baum", "m", "arbre", "m"),
        Noun("box", "Kiste", "f", "boîte", "f"),
        Noun("chair", "Stuhl", "m", "chaise", "f"),
        Noun("lamp", "Lampe", "f", "lampe", "f"),
        Noun("boat", "Boot", "n", "bateau", "m"),
        Noun("flower", "Blume", "f", "fleur", "f"),
        Noun("table", "Tisch", "m", "table", "f"),
        Noun("cup", "Tasse", "f", "tasse", "f"),
        Noun("book", "Buch", "n", "livre", "m"),
        Noun("umbrella", "Schirm", "m", "parapluie", "m"),
    )
}

# Adjectives: German stem (inflected by case/gender/article), French (masculine, feminine).
COLOURS = {
    "red": ("rot", ("rouge", "rouge")),
    "blue": ("blau", ("bleu", "bleue")),
    "green": ("grün", ("vert", "verte")),
    "yellow": ("gelb", ("jaune", "jaune")),
    "black": ("schwarz", ("noir", "noire")),
    "white": ("weiß", ("blanc", "blanche")),
    "grey": ("grau", ("gris", "grise")),
}
SIZES = {  # French size adjectives stand before the noun, colours after it
    "small": ("klein", ("petit", "petite")),
    "big": ("groß", ("grand", "grande")),
}
# Actions of animate objects: English participle, German 3sg, French 3sg (masculine, feminine subject).
ACTIONS = {
    "running": ("läuft", ("court", "court")),
    "sleeping": ("schläft", ("dort", "dort")),
    "jumping": ("springt", ("saute", "saute")),
    "sitting": ("sitzt", ("est assis", "est assise")),
    "eating": ("frisst", ("mange", "mange")),
}
# Relations between two objects: English, German preposition (+ dative), French preposition.
RELATIONS = {
    "next to": ("neben", "à côté de"),
    "on": ("auf", "sur"),
    "under": ("unter", "sous"),
    "in front of": ("vor", "devant"),
    "behind": ("hinter", "derrière"),
}
INVERSE_RELATION = {"next to": "next to", "on": "under", "under": "on", "in front of": "behind", "behind": "in front of"}
# Canonical form of a relation (the visual code does not know which object a caption names first).
CANONICAL_RELATION = {"next to": "next to", "on": "on", "under": "on", "in front of": "in front of", "behind": "in front of"}

# German articles by definiteness, case, gender; adjective endings after them.
def _by_case_gender(nom: str, acc: str, dat: str) -> dict[str, dict[str, str]]:
    """``{"nom": {"m": ., "f": ., "n": .}, ...}`` from space-separated m/f/n forms per case."""
    return {case: dict(zip("mfn", forms.split())) for case, forms in (("nom", nom), ("acc", acc), ("dat", dat))}


DE_ARTICLES = {
    "def": _by_case_gender("der die das", "den die das", "dem der dem"),
    "indef": _by_case_gender("ein eine ein", "einen eine ein", "einem einer einem"),
}
DE_ENDINGS = {  # weak declension after der/die/das, mixed after ein/eine
    "def": _by_case_gender("e e e", "en e e", "en en en"),
    "indef": _by_case_gender("er e es", "en e es", "en en en"),
}
DE_RELATIVE_PRONOUNS = {"m": "der", "f": "die", "n": "das"}

# Near synonyms an MT system may pick (word, gender); the article keeps the original's agreement.
DE_SYNONYMS = {"Auto": ("Wagen", "m"), "Kiste": ("Schachtel", "f"), "Ball": ("Kugel", "f"), "Tasse": ("Becher", "m"),
               "Boot": ("Schiff", "n"), "Stuhl": ("Sessel", "m"), "Schirm": ("Regenschirm", "m"), "Lampe": ("Leuchte", "f"),
               "groß": ("riesig", None), "klein": ("winzig", None)}
FR_SYNONYMS = {"voiture": ("auto", "f"), "boîte": ("caisse", "f"), "balle": ("ballon", "m"), "tasse": ("bol", "m"),
               "bateau": ("navire", "m"), "chaise": ("siège", "m"), "parapluie": ("ombrelle", "f"), "maison": ("bâtiment", "m"),
               "grand": ("gros", None), "petit": ("minuscule", None)}

VOWELS = tuple("aeiouyàâéèêëîïôûùh")  # French elision before a vowel or mute h


def lexicon_words() -> list[str]:
    """Every word form the demo grammars can produce (for tokenizer coverage checks)."""
    words: set[str] = set()
    for noun in NOUNS.values():
        words.update((noun.en, noun.de, noun.fr))
    for en, (de, fr) in {**COLOURS, **SIZES}.items():
        words.add(en)
        words.update(de + e for e in ("", "e", "er", "es", "en", "em"))
        words.update(fr)
    for en, (de, fr) in ACTIONS.items():
        words.update((en, de, *" ".join(fr).split()))
    for en, (de, fr) in RELATIONS.items():
        words.update((*en.split(), de, *fr.split()))
    for table in DE_ARTICLES.values():
        for forms in table.values():
            words.update(forms.values())
    for synonyms in (DE_SYNONYMS, FR_SYNONYMS):
        words.update(word for word, _ in synonyms.values())
    return sorted(words)
