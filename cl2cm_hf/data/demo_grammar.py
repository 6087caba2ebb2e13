"""Caption grammars of the demo world: English source captions, their literal German/French
translations (the MT side, before noise) and human-style German/French captions.

Agreement is real: German articles and adjective endings follow gender, case and the article
("ein großer roter Hund", "neben einer kleinen blauen Kiste", "Auf dem Bild sieht man einen ...");
French articles, contractions, elision and adjectives follow gender ("un grand chien rouge",
"une petite voiture bleue", "à côté du livre", "à côté de l'arbre", "d'une", "est assise").

The MT side mirrors the English sentence ("X [verb] rel Y, and Z is rel the Y"). The human
templates never occur on the MT side: "Auf dem Bild sieht man ...", relative clauses ("..., der
neben ... läuft", "... qui court ..."), inversion ("Neben einem ... befindet sich ...",
"À côté d'une ... se trouve ..."), "Il y a ... sur la photo".

Words are `Token`s carrying what the MT noise model needs: the English word, wrongly agreeing
forms and near synonyms / wrong colours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cl2cm_hf.data.demo_lexicon import (
    ACTIONS,
    COLOURS,
    DE_ARTICLES,
    DE_ENDINGS,
    DE_RELATIVE_PRONOUNS,
    DE_SYNONYMS,
    FR_SYNONYMS,
    INVERSE_RELATION,
    NOUNS,
    RELATIONS,
    SIZES,
    VOWELS,
)
from cl2cm_hf.data.demo_scenes import DemoObject, Scene

_DE_ADJ_ENDINGS = ("e", "er", "es", "en", "em")
_DE_PRONOUNS = {"m": "er", "f": "sie", "n": "es"}


@dataclass
class Token:
    text: str
    role: str = "word"  # det, size, colour, noun, verb, prep, punct, word
    en: str | None = None  # the English word (untranslated-word noise)
    forms: tuple[str, ...] = ()  # wrongly agreeing forms of the same word
    alternatives: tuple[str, ...] = ()  # other words an MT system may pick (synonyms, wrong colours)
    glue: bool = False  # no space after (French elision: l', d')


def words(text: str, role: str = "word") -> list[Token]:
    return [Token(w, role) for w in text.split()]


def detokenize(tokens: list[Token]) -> str:
    """Join tokens: no space before , . or after an elided article; first letter capitalised."""
    out = ""
    glue = True
    for token in tokens:
        if token.role == "punct" or glue:
            out += token.text
        else:
            out += " " + token.text
        glue = token.glue
    return out[:1].upper() + out[1:]


@dataclass(frozen=True)
class Clause:
    """One clause of an English caption: subject [action] [relation other]."""

    subject: int
    relation: str | None = None
    other: int | None = None
    other_definite: bool = False


def _flip(scene: Scene, subject: int, rel: str, other: int, rng: np.random.Generator) -> tuple[int, str, int]:
    """Name the relation from the other side (X on Y = Y under X) when no action must be voiced."""
    if scene.objects[subject].action is None and rng.random() < 0.5:
        return other, INVERSE_RELATION[rel], subject
    return subject, rel, other


def plan_caption(scene: Scene, rng: np.random.Generator) -> tuple[list[Clause], tuple[bool, ...]]:
    """Clause order and which sizes are mentioned, for one English caption and its translations."""
    show_size = tuple(bool(o.size) and rng.random() < 0.85 for o in scene.objects)
    if not scene.relations:
        return [Clause(0)], show_size
    if len(scene.relations) == 1 or rng.random() < 0.5:
        # "X rel Y[, and Z is rel2 the Y]"; the first clause may be said from Y's side.
        clauses = [Clause(*_flip(scene, *scene.relations[0], rng))]
    else:  # "Z rel2 Y, and X is rel the Y": the anchor Y must be introduced before "the Y"
        clauses = [Clause(*scene.relations[1]), Clause(*scene.relations[0], other_definite=True)]
        return clauses, show_size
    if len(scene.relations) > 1:
        clauses.append(Clause(*scene.relations[1], other_definite=True))
    return clauses, show_size


# --- English ----------------------------------------------------------------------------------
def en_np(o: DemoObject, definite: bool, show_size: bool) -> list[Token]:
    if definite:
        return [Token("the", "det"), Token(o.noun, "noun")]
    adjectives = ([o.size] if show_size and o.size else []) + [o.colour]
    article = "an" if adjectives[0][0] in "aeiou" else "a"
    return [Token(article, "det")] + [Token(a, "adj") for a in adjectives] + [Token(o.noun, "noun")]


def realize_en(scene: Scene, plan: tuple[list[Clause], tuple[bool, ...]]) -> str:
    clauses, show_size = plan
    tokens: list[Token] = []
    for i, clause in enumerate(clauses):
        if i:
            tokens += [Token(",", "punct"), Token("and")]
        o = scene.objects[clause.subject]
        tokens += en_np(o, False, show_size[clause.subject])
        if o.action:
            tokens += [Token("is", "verb"), Token(o.action, "verb")]
        elif i:
            tokens.append(Token("is", "verb"))
        if clause.relation:
            tokens += words(clause.relation, "prep")
            other = scene.objects[clause.other]
            tokens += en_np(other, clause.other_definite, show_size[clause.other])
    return detokenize(tokens)


# --- German -----------------------------------------------------------------------------------
def _de_adj(en: str, stem: str, ending: str, role: str, synonyms_ok: bool) -> Token:
    table = COLOURS if role == "colour" else SIZES
    alternatives = tuple(table[k][0] + ending for k in sorted(table) if k != en)
    if synonyms_ok and stem in DE_SYNONYMS:
        alternatives += (DE_SYNONYMS[stem][0] + ending,)
    return Token(stem + ending, role, en, tuple(stem + e for e in _DE_ADJ_ENDINGS if e != ending), alternatives)


def de_np(o: DemoObject, case: str, definite: bool, show_size: bool, full: bool = True) -> list[Token]:
    """German noun phrase in `case` ("nom", "acc", "dat"); a definite second mention is article + noun."""
    noun = NOUNS[o.noun]
    kind = "def" if definite else "indef"
    article = DE_ARTICLES[kind][case][noun.de_gender]
    all_articles = sorted({a for forms in DE_ARTICLES[kind].values() for a in forms.values()})
    tokens = [Token(article, "det", "the" if definite else "a", tuple(a for a in all_articles if a != article))]
    if full:
        ending = DE_ENDINGS[kind][case][noun.de_gender]
        if show_size and o.size:
            tokens.append(_de_adj(o.size, SIZES[o.size][0], ending, "size", True))
        tokens.append(_de_adj(o.colour, COLOURS[o.colour][0], ending, "colour", False))
    synonym = (DE_SYNONYMS[noun.de][0],) if noun.de in DE_SYNONYMS else ()
    tokens.append(Token(noun.de, "noun", o.noun, (), synonym))
    return tokens


def _de_verb(o: DemoObject) -> Token:
    return Token(ACTIONS[o.action][0], "verb", o.action)


def realize_de_mt(scene: Scene, plan: tuple[list[Clause], tuple[bool, ...]]) -> list[Token]:
    """Literal German translation of the English caption of `plan`."""
    clauses, show_size = plan
    tokens: list[Token] = []
    for i, clause in enumerate(clauses):
        if i:
            tokens += [Token(",", "punct"), Token("und", en="and")]
        o = scene.objects[clause.subject]
        tokens += de_np(o, "nom", False, show_size[clause.subject])
        if o.action:
            tokens.append(_de_verb(o))
        elif i:
            tokens.append(Token("ist", "verb", "is"))
        if clause.relation:
            tokens.append(Token(RELATIONS[clause.relation][0], "prep", clause.relation))
            other = scene.objects[clause.other]
            tokens += de_np(other, "dat", clause.other_definite, show_size[clause.other], full=not clause.other_definite)
    return tokens


def realize_de_human(scene: Scene, rng: np.random.Generator) -> str:
    """A German caption in a style the MT side never uses (three templates)."""
    show = tuple(bool(o.size) and rng.random() < 0.85 for o in scene.objects)
    template = int(rng.integers(3))
    head, rel, other = (0, None, None) if not scene.relations else _flip(scene, *scene.relations[0], rng)
    o = scene.objects[head]
    gender = NOUNS[o.noun].de_gender
    np_ = lambda i, case, definite=False: de_np(scene.objects[i], case, definite, show[i], full=not definite)  # noqa: E731
    pp = [] if rel is None else [Token(RELATIONS[rel][0], "prep")] + np_(other, "dat")
    if template == 0:  # Auf dem Bild sieht man einen ..., der [neben ...] läuft / sich [neben ...] befindet.
        tokens = words("auf dem Bild sieht man") + np_(head, "acc")
        if o.action or pp:
            tokens += [Token(",", "punct"), Token(DE_RELATIVE_PRONOUNS[gender])]
            tokens += (pp + [_de_verb(o)]) if o.action else ([Token("sich")] + pp + [Token("befindet")])
    elif template == 1:  # Neben einem ... befindet sich / läuft ein ...  |  Zu sehen ist ein ..., der gerade läuft.
        if pp:  # detokenize capitalises the preposition
            tokens = pp + ([_de_verb(o)] if o.action else words("befindet sich")) + np_(head, "nom")
        else:
            tokens = words("zu sehen ist") + np_(head, "nom")
            if o.action:
                tokens += [Token(",", "punct"), Token(DE_RELATIVE_PRONOUNS[gender]), Token("gerade"), _de_verb(o)]
    else:  # Das Foto zeigt einen ... neben einem .... Er läuft gerade.
        tokens = words("das Foto zeigt") + np_(head, "acc") + pp
        if o.action:
            tokens += [Token(".", "punct"), Token(_DE_PRONOUNS[gender].capitalize()), _de_verb(o), Token("gerade")]
    if len(scene.relations) > 1:  # Außerdem befindet sich / schläft eine ... unter dem Auto.
        subject, rel2, anchor = scene.relations[1]
        s = scene.objects[subject]
        tokens += [Token(".", "punct"), Token("Außerdem")] + ([_de_verb(s)] if s.action else words("befindet sich"))
        tokens += np_(subject, "nom") + [Token(RELATIONS[rel2][0], "prep")] + np_(anchor, "dat", definite=True)
    return detokenize(tokens + [Token(".", "punct")])


# --- French -----------------------------------------------------------------------------------
def _fr_adj(en: str, o_gender: str, role: str, synonyms_ok: bool) -> Token:
    table = COLOURS if role == "colour" else SIZES
    index = 0 if o_gender == "m" else 1
    text = table[en][1][index]
    own = table[en][1]
    forms = tuple(dict.fromkeys(f for f in (*own, own[0] + "s", own[1] + "s") if f != text))
    alternatives = tuple(table[k][1][index] for k in sorted(table) if k != en)
    if synonyms_ok and own[0] in FR_SYNONYMS:
        alternatives += (FR_SYNONYMS[own[0]][0],)
    return Token(text, role, en, forms, alternatives)


def fr_np(o: DemoObject, definite: bool, show_size: bool, full: bool = True, prep: str | None = None) -> list[Token]:
    """French noun phrase, preceded by `prep` if given ("à côté de" contracts: du, de la, de l', d'un)."""
    noun = NOUNS[o.noun]
    gender = noun.fr_gender
    body: list[Token] = []
    if full and show_size and o.size:
        body.append(_fr_adj(o.size, gender, "size", True))
    synonym = (FR_SYNONYMS[noun.fr][0],) if noun.fr in FR_SYNONYMS else ()
    body.append(Token(noun.fr, "noun", o.noun, (), synonym))
    if full:
        body.append(_fr_adj(o.colour, gender, "colour", False))
    elide = body[0].text[0].lower() in VOWELS
    if definite:
        le, la = ("le", "la") if gender == "m" else ("la", "le")
        article = Token("l'", "det", "the", ("le", "la"), glue=True) if elide else Token(le, "det", "the", (la,))
    else:
        article = Token("un" if gender == "m" else "une", "det", "a", ("une" if gender == "m" else "un",))
    head: list[Token] = []
    if prep is not None:
        prep_words = prep.split()
        if prep_words[-1] == "de":  # contraction of de + article
            head = words(" ".join(prep_words[:-1]), "prep")
            if definite and not elide and gender == "m":
                article = Token("du", "det", "the", ("de la",))
            elif definite:
                head.append(Token("de", "prep"))
            else:
                head.append(Token("d'", "prep", glue=True))
        else:
            head = words(prep, "prep")
    return head + [article] + body


def _fr_verb(o: DemoObject) -> list[Token]:
    gender = NOUNS[o.noun].fr_gender
    forms = ACTIONS[o.action][1]
    text = forms[0 if gender == "m" else 1].split()
    other = forms[1 if gender == "m" else 0].split()
    return [Token(w, "verb", o.action, (x,) if x != w else ()) for w, x in zip(text, other)]


def realize_fr_mt(scene: Scene, plan: tuple[list[Clause], tuple[bool, ...]]) -> list[Token]:
    """Literal French translation of the English caption of `plan`."""
    clauses, show_size = plan
    tokens: list[Token] = []
    for i, clause in enumerate(clauses):
        if i:
            tokens += [Token(",", "punct"), Token("et", en="and")]
        o = scene.objects[clause.subject]
        tokens += fr_np(o, False, show_size[clause.subject])
        if o.action:
            tokens += _fr_verb(o)
        elif i:
            tokens.append(Token("est", "verb", "is"))
        if clause.relation:
            other = scene.objects[clause.other]
            definite = clause.other_definite
            tokens += fr_np(other, definite, show_size[clause.other], not definite, RELATIONS[clause.relation][1])
    return tokens


def realize_fr_human(scene: Scene, rng: np.random.Generator) -> str:
    """A French caption in a style the MT side never uses (three templates)."""
    show = tuple(bool(o.size) and rng.random() < 0.85 for o in scene.objects)
    template = int(rng.integers(3))
    head, rel, other = (0, None, None) if not scene.relations else _flip(scene, *scene.relations[0], rng)
    o = scene.objects[head]
    np_ = lambda i, prep=None, definite=False: fr_np(scene.objects[i], definite, show[i], not definite, prep)  # noqa: E731
    pp = [] if rel is None else np_(other, RELATIONS[rel][1])
    relative = ([Token("qui")] + _fr_verb(o)) if o.action else []
    if template == 0:  # Il y a un ... [qui court] à côté d'une ... sur la photo.
        tokens = words("il y a") + np_(head) + relative + pp + words("sur la photo")
    elif template == 1:  # On voit un ... qui court / qui se trouve à côté de ...
        tokens = words("on voit") + np_(head)
        tokens += relative or (words("qui se trouve") if pp else [])
        tokens += pp
    elif pp:  # À côté d'une ... se trouve un ...  |  À côté d'une ..., un ... court.
        tokens = pp + ([Token(",", "punct")] + np_(head) + _fr_verb(o) if o.action else words("se trouve") + np_(head))
    else:  # Sur l'image, on aperçoit un ... [qui court].
        tokens = [Token("sur"), Token("l'", glue=True), Token("image"), Token(",", "punct"), *words("on aperçoit")]
        tokens += np_(head) + relative
    if len(scene.relations) > 1:  # De plus, une ... dort / se trouve sous la voiture.
        subject, rel2, anchor = scene.relations[1]
        s = scene.objects[subject]
        tokens += [Token(".", "punct"), Token("De"), Token("plus"), Token(",", "punct")] + np_(subject)
        tokens += (_fr_verb(s) if s.action else words("se trouve")) + np_(anchor, RELATIONS[rel2][1], definite=True)
    return detokenize(tokens + [Token(".", "punct")])


MT_REALIZERS = {"de": realize_de_mt, "fr": realize_fr_mt}
HUMAN_REALIZERS = {"de": realize_de_human, "fr": realize_fr_human}
