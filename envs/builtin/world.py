"""A generated world of fictional entities and relations, rendered into a small search corpus.

Entities are people, cities, countries, companies and products with made-up names built from a modest
syllable vocabulary (so a tiny tokenizer learns them). Every relation is a function (one value per
entity), which makes multi-hop questions unambiguous:

| relation | from -> to | document sentence |
| --- | --- | --- |
| maker | product -> company | "The maker of Nimbus Pad is Zentrix." |
| founder | company -> person | "The founder of Zentrix is Mira Tal." |
| headquarters | company -> city | "The headquarters of Zentrix is Lomira." |
| birthplace | person -> city | "The birthplace of Mira Tal is Varton." |
| employer | person -> company | "The employer of Mira Tal is Qualex." |
| country | city -> country | "The country of Varton is Estavia." |

Each entity has one document (its outgoing facts); ``distractors`` adds short documents that mention
entities without stating any relation. A ``h``-hop question walks ``h`` relations from a start entity
("What is the birthplace of the founder of the maker of Nimbus Pad?"); its ideal search queries are
"maker of Nimbus Pad", "founder of Zentrix", "birthplace of Mira Tal".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from turngym.errors import ConfigError

FIRST_NAMES = [
    "Mira",
    "Tomas",
    "Lena",
    "Oskar",
    "Ines",
    "Pavel",
    "Nadia",
    "Elio",
    "Vera",
    "Ivo",
    "Rosa",
    "Aron",
    "Kaia",
    "Nils",
    "Tara",
    "Emil",
    "Livia",
    "Bruno",
    "Sana",
    "Ugo",
    "Dara",
    "Felix",
    "Alma",
    "Jonas",
]
LAST_NAMES = [
    "Tal",
    "Varga",
    "Orlo",
    "Kestin",
    "Amari",
    "Brenn",
    "Solis",
    "Dunmore",
    "Vey",
    "Halden",
    "Marek",
    "Quill",
    "Rask",
    "Ferro",
    "Lind",
    "Moro",
    "Petrov",
    "Arden",
    "Colt",
    "Navas",
    "Sorel",
    "Wynn",
    "Basso",
    "Ekland",
]
CITY_HEADS = [
    "Lom",
    "Var",
    "Zen",
    "Kor",
    "Bel",
    "Ost",
    "Mar",
    "Tul",
    "Fen",
    "Dra",
    "Sel",
    "Nor",
    "Kal",
    "Ven",
    "Ard",
    "Pim",
]
CITY_TAILS = ["ira", "ton", "dale", "mar", "holm", "ova", "port", "field", "stad", "wick"]
COMPANY_HEADS = ["Zent", "Vark", "Qual", "Brix", "Nov", "Lum", "Tarn", "Hex", "Orb", "Cyr", "Plex", "Vox"]
COMPANY_TAILS = ["rix", "on", "ora", "ex", "ium", "ant", "ly", "ico"]
PRODUCT_HEADS = ["Aero", "Nimbus", "Pulse", "Echo", "Terra", "Flux", "Orbit", "Prism", "Sola", "Vita"]
PRODUCT_TAILS = ["Pad", "Phone", "Watch", "Lamp", "Drive", "Pen", "Cam", "Board"]
COUNTRIES = [
    "Estavia",
    "Norland",
    "Karuna",
    "Belmora",
    "Ostria",
    "Valdera",
    "Tessaly",
    "Corvia",
    "Lunaria",
    "Dravia",
    "Maltova",
    "Serin",
]

TYPES = ("person", "city", "country", "company", "product")


@dataclass(frozen=True)
class Relation:
    """A functional relation between two entity types."""

    name: str
    src: str
    dst: str


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation("maker", "product", "company"),
        Relation("founder", "company", "person"),
        Relation("headquarters", "company", "city"),
        Relation("birthplace", "person", "city"),
        Relation("employer", "person", "company"),
        Relation("country", "city", "country"),
    )
}
OUTGOING: dict[str, list[str]] = {t: [r.name for r in RELATIONS.values() if r.src == t] for t in TYPES}


def fact_sentence(relation: str, src: str, dst: str) -> str:
    """The sentence stating ``relation(src) = dst`` (also the ideal query's match target)."""
    return f"The {relation} of {src} is {dst}."


def query_text(relation: str, src: str) -> str:
    """The ideal search query for one hop: ``"<relation> of <entity>"``."""
    return f"{relation} of {src}"


@dataclass
class Hop:
    """One hop of a question: ``relation(src) = dst``."""

    relation: str
    src: str
    dst: str

    @property
    def query(self) -> str:
        return query_text(self.relation, self.src)

    @property
    def fact(self) -> str:
        return fact_sentence(self.relation, self.src, self.dst)


@dataclass
class World:
    """Entities, their facts and the rendered corpus.

    Attributes:
        seed: Generation seed.
        entities: ``name -> type``.
        facts: ``(relation, src) -> dst``.
        docs: The corpus, ``[{"id", "contents"}]``; entity documents first, then distractors.
        doc_of: ``entity name -> doc id`` of its own document.
    """

    seed: int
    entities: dict[str, str] = field(default_factory=dict)
    facts: dict[tuple[str, str], str] = field(default_factory=dict)
    docs: list[dict[str, str]] = field(default_factory=list)
    doc_of: dict[str, str] = field(default_factory=dict)

    def of_type(self, t: str) -> list[str]:
        return [n for n, tt in self.entities.items() if tt == t]

    def sample_chain(self, rng: np.random.Generator, hops: int, max_tries: int = 200) -> list[Hop]:
        """A random ``hops``-long chain of relations with no entity visited twice.

        Raises:
            ConfigError: when the world has no such chain (too few hops possible; max is 4).
        """
        starts = [n for n, t in self.entities.items() if OUTGOING[t]]
        for _ in range(max_tries):
            cur = starts[int(rng.integers(0, len(starts)))]
            seen = {cur}
            chain: list[Hop] = []
            while len(chain) < hops:
                options = [r for r in OUTGOING[self.entities[cur]] if (r, cur) in self.facts]
                options = [r for r in options if self.facts[(r, cur)] not in seen]
                if not options:
                    break
                rel = options[int(rng.integers(0, len(options)))]
                nxt = self.facts[(rel, cur)]
                chain.append(Hop(rel, cur, nxt))
                seen.add(nxt)
                cur = nxt
            if len(chain) == hops:
                return chain
        raise ConfigError(f"Could not sample a {hops}-hop chain from this world; use hops between 1 and 4.")


def question_text(chain: list[Hop]) -> str:
    """``"What is the country of the birthplace of the founder of Zentrix?"`` for a chain."""
    inner = chain[0].src
    for hop in chain:
        inner = f"the {hop.relation} of {inner}"
    return f"What is {inner}?"


def generate_world(seed: int = 0, corpus_size: int = 120, distractors: int = 20) -> World:
    """Generate a world with about ``corpus_size`` entity documents plus ``distractors`` extra documents.

    Args:
        seed: World seed (the same seed gives the same world, byte for byte).
        corpus_size: Number of entities (one document each), 20..800.
        distractors: Number of distractor documents (mention entities, state no relation).

    Returns:
        The `World`.
    """
    if not 20 <= corpus_size <= 800:
        raise ConfigError(f"corpus_size must be in [20, 800] (name vocabulary limit), got {corpus_size}.")
    if distractors < 0:
        raise ConfigError(f"distractors must be >= 0, got {distractors}.")
    rng = np.random.default_rng(seed)
    n_country = max(3, min(len(COUNTRIES), corpus_size // 15))
    rest = corpus_size - n_country
    n_city = max(4, rest * 20 // 100)
    n_company = max(4, rest * 22 // 100)
    n_product = max(4, rest * 18 // 100)
    n_person = rest - n_city - n_company - n_product

    def pick(pool: list[str], n: int) -> list[str]:
        if n > len(pool):
            raise ConfigError(
                f"corpus_size={corpus_size} needs {n} names but the vocabulary has {len(pool)}."
            )
        idx = rng.permutation(len(pool))[:n]
        return [pool[i] for i in sorted(idx)]

    w = World(seed=seed)
    names = {
        "country": pick(list(COUNTRIES), n_country),
        "city": pick([h + t for h in CITY_HEADS for t in CITY_TAILS], n_city),
        "company": pick([h + t for h in COMPANY_HEADS for t in COMPANY_TAILS], n_company),
        "product": pick([f"{h} {t}" for h in PRODUCT_HEADS for t in PRODUCT_TAILS], n_product),
        "person": pick([f"{f} {last}" for f in FIRST_NAMES for last in LAST_NAMES], n_person),
    }
    for t in ("country", "city", "company", "product", "person"):
        for n in names[t]:
            w.entities[n] = t

    def choose(t: str) -> str:
        pool = names[t]
        return pool[int(rng.integers(0, len(pool)))]

    for c in names["city"]:
        w.facts[("country", c)] = choose("country")
    for c in names["company"]:
        w.facts[("founder", c)] = choose("person")
        w.facts[("headquarters", c)] = choose("city")
    for p in names["product"]:
        w.facts[("maker", p)] = choose("company")
    for p in names["person"]:
        w.facts[("birthplace", p)] = choose("city")
        w.facts[("employer", p)] = choose("company")

    kind_text = {
        "person": "a person",
        "city": "a city",
        "country": "a country",
        "company": "a company",
        "product": "a product",
    }
    for i, (name, t) in enumerate(w.entities.items()):
        sents = [f"{name} is {kind_text[t]}."]
        for rel in OUTGOING[t]:
            if (rel, name) in w.facts:
                sents.append(fact_sentence(rel, name, w.facts[(rel, name)]))
        doc_id = f"e{i}"
        w.docs.append({"id": doc_id, "contents": f"{name}\n" + " ".join(sents)})
        w.doc_of[name] = doc_id
    all_names = list(w.entities)
    verbs = ("met", "visited", "wrote about", "talked with", "saw")
    for j in range(distractors):
        a = all_names[int(rng.integers(0, len(all_names)))]
        b = all_names[int(rng.integers(0, len(all_names)))]
        v = verbs[int(rng.integers(0, len(verbs)))]
        w.docs.append({"id": f"d{j}", "contents": f"News\n{a} {v} {b} last year."})
    return w
