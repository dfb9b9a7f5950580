"""Parse and convert: raw VARCO outputs per second through the tag grammar (``varco.parse``) and
through the whole conversion to a Label Studio prediction (``prediction_from_varco``: parse,
regions, label mapping, result JSON).

Inputs: the captured outputs in tests/fixtures/varco (or $VARCO_FIXTURES), and a synthetic
character-level OCR output of ~2,000 items (VARCO-VISION-2.0-OCR emits one box per character).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from bench.common import REPO, Context, Report, Table, rate
from varco_labeler.labelstudio import LabelMapper, prediction_from_varco, read_label_config
from varco_labeler.labelstudio.templates import label_config
from varco_labeler.varco import Task, parse

FIXTURES = Path(os.environ.get("VARCO_FIXTURES", REPO / "tests" / "fixtures")) / "varco"
GROUNDING_CONFIG = label_config("grounding", ["Cat", "Remote", "Blanket"])
OCR_CONFIG = label_config("ocr")
HANGUL = "가나다라마바사아자차카타파하백범로번길시흥청공원역"


def synthetic_ocr(items: int = 2000, seed: int = 0) -> str:
    """Character-level OCR output: one ``<char>`` item and box per character, in lines of 25."""
    rng = random.Random(seed)
    lines, width = [], 1 / 26
    for line in range(-(-items // 25)):
        y1 = (line % 40) / 40
        cells = []
        for column in range(min(25, items - line * 25)):
            x1 = column * width + 0.002
            char = rng.choice(HANGUL + "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
            box = f"{x1:.3f}, {y1:.3f}, {x1 + width * 0.9:.3f}, {y1 + 0.02:.3f}"
            cells.append(f"<char>{char}</char><bbox>{box}</bbox>")
        lines.append("".join(cells))
    return "\n".join(lines)


def run(ctx: Context) -> Report:
    min_seconds = ctx.pick(0.05, 0.3, 1.0)
    grounding = read_label_config(GROUNDING_CONFIG)
    ocr = read_label_config(OCR_CONFIG)
    cases = [
        ("grounding_two_cats", (FIXTURES / "grounding_two_cats.txt").read_text(), Task.GROUNDING),
        ("ocr_street_sign", (FIXTURES / "ocr_street_sign.txt").read_text(), Task.OCR),
        ("referring_prompt", (FIXTURES / "referring_prompt.txt").read_text(), Task.GROUNDING),
        ("synthetic OCR, 2,000 chars", synthetic_ocr(2000), Task.OCR),
    ]
    rows, data = [], {}
    for name, raw, task in cases:
        config = ocr if task == Task.OCR else grounding
        mapper = LabelMapper(config.labels, config.aliases)
        parsed = parse(raw)
        conversion = prediction_from_varco(raw, task, config, mapper, 1280, 960, "bench")
        items = len(parsed.grounded)
        if items == 0:
            raise RuntimeError(f"{name}: nothing parsed")
        parse_rate = rate(lambda raw=raw: parse(raw), min_seconds)
        convert_rate = rate(
            lambda raw=raw, task=task, config=config, mapper=mapper: prediction_from_varco(
                raw, task, config, mapper, 1280, 960, "bench", seed="image"
            ),
            min_seconds,
        )
        data[name] = {
            "chars": len(raw),
            "items": items,
            "result_items": len(conversion.prediction["result"]),
            "parse_outputs_per_s": parse_rate,
            "parse_items_per_s": parse_rate * items,
            "convert_outputs_per_s": convert_rate,
            "convert_items_per_s": convert_rate * items,
        }
        rows.append(
            [
                name,
                len(raw),
                items,
                parse_rate,
                parse_rate * items,
                convert_rate,
                convert_rate * items,
            ]
        )
    table = Table(
        "parse + convert: raw outputs per second (one core)",
        ["output", "chars", "items", "parse/s", "parse items/s", "convert/s", "convert items/s"],
        rows,
    )
    notes = [
        "convert = prediction_from_varco: parse + regions + label mapping + result JSON.",
        "per second of this process's CPU time (one core), so other processes' turns on a "
        "shared machine do not count.",
    ]
    return Report("parse", [table], data, notes)
