"""Helpers shared by the tests: the real captures in ../shared/fixtures (or $VARCO_FIXTURES)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from varco_labeler.labelstudio.templates import label_config

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("VARCO_FIXTURES", REPO.parent / "shared" / "fixtures"))

if not (FIXTURES / "varco").is_dir():
    raise RuntimeError(
        f"test fixtures not found at {FIXTURES}: check out shared/ beside the repository "
        "or set VARCO_FIXTURES"
    )


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
