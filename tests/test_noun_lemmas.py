"""The backend's own noun-lemma table must answer exactly as lemminflect does."""

import gzip
from pathlib import Path

import lemminflect
from lemminflect import getLemma

from varco_labeler.labelstudio.labels import _noun_lemma

RESOURCES = Path(lemminflect.__file__).parent / "resources"


def _dictionary_words() -> set[str]:
    with gzip.open(RESOURCES / "lemma_lu.csv.gz", "rt", encoding="utf-8") as lookup:
        words = {line.split(",", 1)[0] for line in lookup}
    overrides = (RESOURCES / "lemma_overrides.csv").read_text(encoding="utf-8").splitlines()
    words |= {line.split(",", 1)[0] for line in overrides if line and not line.startswith("#")}
    # What the label mapper looks up: lower-case ASCII words.
    return {word for word in words if word.isascii() and word.isalpha() and word.islower()}


def test_every_dictionary_word_and_some_unknown_ones_get_lemminflects_lemma():
    words = [*sorted(_dictionary_words()), "blorfs", "zorbles", "kittehs", "qwxz"]
    assert len(words) > 50_000  # every part of speech: verbs-only words take the unknown path
    expected = {word: (getLemma(word, upos="NOUN") or (word,))[0] for word in words}
    assert {word: _noun_lemma(word) for word in words} == expected
