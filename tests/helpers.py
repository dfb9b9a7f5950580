"""Helpers shared by the tests: the real captures in tests/fixtures (or $VARCO_FIXTURES)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from varco_labeler.labelstudio.templates import label_config

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("VARCO_FIXTURES", REPO / "tests" / "fixtures"))

if not (FIXTURES / "varco").is_dir():
    raise RuntimeError(f"test fixtures not found at {FIXTURES} (VARCO_FIXTURES)")


def varco_fixture(name: str) -> str:
    return (FIXTURES / "varco" / f"{name}.txt").read_text(encoding="utf-8")


def labelstudio_fixture(name: str) -> dict[str, Any]:
    """The JSON body of one request captured from Label Studio 1.23.2."""
    return json.loads((FIXTURES / "labelstudio" / f"{name}.json").read_text(encoding="utf-8"))[
        "json"
    ]


CATS_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image">
    <Label value="Cat"/><Label value="Remote"/>
  </RectangleLabels>
</View>"""

# The labels of the tiny model's taught answers: a red image shows a cat, a blue one two dogs.
CAT_DOG_CONFIG = label_config("grounding", ["Cat", "Dog"])

# The OCR specialist (VARCO-VISION-2.0-1.7B-OCR) answers one <char> item per character; its
# profile merges them into words. A green image reads "HI GO": two words, four characters.
GREEN = (40, 160, 40)
CHARACTER_OCR = (
    "<char>H</char><bbox>0.1, 0.2, 0.15, 0.3</bbox>"
    "<char>I</char><bbox>0.16, 0.2, 0.21, 0.3</bbox>"
    "<char>G</char><bbox>0.4, 0.2, 0.45, 0.3</bbox>"
    "<char>O</char><bbox>0.46, 0.2, 0.51, 0.3</bbox>"
)
OCR_PROFILE = "NCSOFT/VARCO-VISION-2.0-1.7B-OCR"
