"""Mapping the model's free phrases ("two remote controls") onto a project's labels ("Remote").

Order of preference: a label's ``predicted_values`` aliases (the convention of Label Studio's own
example backends), then an exact match after normalising (case, leading numbers and articles,
plurals), then the phrase's head noun, then a label contained in the phrase.

English plurals are undone by lemminflect's noun lemmas (a dictionary, so "bus" and "lens" stay,
"buses", "knives" and "lenses" lose their plural), and plurals without an -s ("people",
"geese") by inflect. Korean words lose their particles and the plural suffix 들 through
Kiwi's morphological analysis (kiwipiepy): "고양이가" and "고양이들은" both read "고양이".
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from varco_labeler.regions import Region
from varco_labeler.varco import Task

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_LEADING_WORDS = frozenset(
    "a an the this that these those some several many few multiple various both each "
    "one two three four five six seven eight nine ten eleven twelve pair couple group of".split()
)
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
# Kiwi's tags dropped from a Korean word: particles (J...), the plural suffix 들 (XSN) is
# checked by form, since XSN also covers suffixes that change the meaning.
_KOREAN_PLURAL = "들"


@cache
def _inflect() -> Any:
    import inflect

    return inflect.engine()


@cache
def _kiwi() -> Any:
    from kiwipiepy import Kiwi  # loads its model (~2 s) on the first Korean phrase only

    return Kiwi()


@cache
def _noun_lemmas() -> dict[str, str]:
    """lemminflect's dictionary of noun lemmas (first spelling), read from its own files.

    lemminflect keeps every part of speech in memory (about 30 MB, and it imports numpy); the
    backend needs nouns only, and lemminflect itself only for words outside its dictionary.
    """
    spec = importlib.util.find_spec("lemminflect")  # finds the files without importing numpy
    assert spec is not None and spec.submodule_search_locations
    resources = Path(spec.submodule_search_locations[0]) / "resources"
    lemmas: dict[str, str] = {}
    with gzip.open(resources / "lemma_lu.csv.gz", "rt", encoding="utf-8") as lookup:
        for line in lookup:
            word, category, forms = line.strip().split(",")
            if category == "noun" and word.isascii() and word.isalpha() and word.islower():
                lemma = forms.split("/", 1)[0].lower()
                lemmas[word] = word if lemma == word else lemma
    with open(resources / "lemma_overrides.csv", encoding="utf-8") as overrides:
        for line in overrides:
            line = line.strip()
            if line and not line.startswith("#"):
                word, upos, lemma = line.split(",")
                if upos == "NOUN":
                    lemmas[word] = lemma.lower()
    return lemmas


def _noun_lemma(word: str) -> str:
    """What ``lemminflect.getLemma(word, upos="NOUN")[0]`` says of a lower-case word, or the
    word itself when it has no answer."""
    lemma = _noun_lemmas().get(word)
    if lemma is not None:
        return lemma
    from lemminflect import Lemmatizer  # rules for words outside the dictionary

    lemmas = Lemmatizer().getAllLemmasOOV(word, "NOUN").get("NOUN")
    return lemmas[0] if lemmas else word


@cache
def _singular(word: str) -> str:
    if not word.isascii() or not word.isalpha():
        return word
    lemma = _noun_lemma(word)
    if lemma == word and not word.endswith("s"):
        # Irregular plurals the lemma dictionary keeps as they are ("people").
        return _inflect().singular_noun(word) or word
    return lemma


@cache
def _korean_words(word: str) -> tuple[str, ...]:
    """A Korean word's content morphemes: particles and the plural 들 dropped."""
    tokens = _kiwi().tokenize(word)
    kept = tuple(
        t.form
        for t in tokens
        if not t.tag.startswith("J") and not (t.tag == "XSN" and t.form == _KOREAN_PLURAL)
    )
    return kept or (word,)


def _words(word: str) -> tuple[str, ...]:
    if _HANGUL.search(word):
        return _korean_words(word)
    return (_singular(word),)


def normalise(text: str) -> tuple[str, ...]:
    """Words of a phrase, compared loosely: "Two Remote-Controls" -> ("remote", "control")."""
    words = _WORD.findall(unicodedata.normalize("NFC", text).casefold())
    start = 0
    while start < len(words) and (words[start] in _LEADING_WORDS or words[start].isdigit()):
        start += 1
    return tuple(part for word in words[start:] for part in _words(word))


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


@dataclass(frozen=True)
class _Name:
    words: tuple[str, ...]
    label: str


# Phrases remembered per label set: a project's model says the same few phrases again and again.
_PHRASES_REMEMBERED = 4096


class _Vocabulary:
    """A label set's names (labels and aliases, normalised) and the phrases already matched."""

    def __init__(self, labels: tuple[str, ...], aliases: tuple[tuple[str, str], ...]) -> None:
        self.aliases = {
            unicodedata.normalize("NFC", alias).casefold(): label for alias, label in aliases
        }
        names = [_Name(normalise(label), label) for label in labels]
        names += [_Name(normalise(alias), label) for alias, label in aliases]
        self.names = [name for name in names if name.words]
        self.default_ocr_label = next(
            (label for label in labels if normalise(label) == ("text",)),
            labels[0] if labels else None,
        )
        self._matches: dict[str, str | None] = {}

    def match(self, phrase: str) -> str | None:
        """The label a phrase names, or None."""
        try:
            return self._matches[phrase]
        except KeyError:
            pass
        if len(self._matches) >= _PHRASES_REMEMBERED:
            self._matches.clear()
        label = self._matches[phrase] = self._find(phrase)
        return label

    def _find(self, phrase: str) -> str | None:
        alias = self.aliases.get(unicodedata.normalize("NFC", phrase).strip().casefold())
        if alias:
            return alias
        words = normalise(phrase)
        if words:
            tests = (
                lambda n: n.words == words,
                lambda n: n.words == words[-len(n.words) :],  # head noun: "pink blanket"
                lambda n: _contains(words, n.words),  # "remote control" holds "remote"
            )
            for test in tests:
                matches = [name for name in self.names if test(name)]
                if matches:
                    return max(matches, key=lambda n: len(n.words)).label
        return None


@lru_cache(maxsize=64)
def _vocabulary(labels: tuple[str, ...], aliases: tuple[tuple[str, str], ...]) -> _Vocabulary:
    return _Vocabulary(labels, aliases)


class LabelMapper:
    """Picks the label for a phrase; ``fallback`` takes phrases that match nothing.

    Cheap to make per job: the normalised names and matched phrases are shared per label set.
    """

    def __init__(
        self,
        labels: Iterable[str],
        aliases: Mapping[str, str] | None = None,
        fallback: str | None = None,
        ocr_label: str | None = None,
    ) -> None:
        self.labels = tuple(labels)
        for name, label in (("fallback", fallback), ("OCR", ocr_label)):
            if label is not None and label not in self.labels:
                raise ValueError(f"{name} label {label!r} is not in the label config {self.labels}")
        self._vocabulary = _vocabulary(self.labels, tuple((aliases or {}).items()))
        self.fallback = fallback
        self.ocr_label = ocr_label or self._vocabulary.default_ocr_label

    def label_for(self, phrase: str) -> str | None:
        label = self._vocabulary.match(phrase)
        return self.fallback if label is None else label

    def assign(self, regions: Iterable[Region], task: Task | str) -> tuple[list[Region], list[str]]:
        """Label regions for a project; returns the labelled regions and why others were dropped.

        A project without labels keeps every region unlabelled.
        """
        task = Task(task)
        kept: list[Region] = []
        dropped: list[str] = []
        for region in regions:
            if not self.labels:
                kept.append(region)
                continue
            if region.label in self.labels:
                kept.append(region)
                continue
            if task is Task.OCR:
                label = self.ocr_label
            else:
                label = self.label_for(region.phrase or region.text or "")
            if label is None:
                dropped.append(f"phrase {region.phrase!r} matches no label of {self.labels}")
            else:
                kept.append(region.with_(label=label))
        return kept, dropped


def warm_up() -> None:
    """Load the word lists now: the first plural looked up costs seconds, more than Label
    Studio's 3 s for a /setup (the backend calls this before it listens)."""
    _singular("people")
