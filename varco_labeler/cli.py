"""The ``varco-labeler`` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from varco_labeler.labelstudio import LabelConfigError, LabelMapper, read_label_config
from varco_labeler.labelstudio.import_file import convert_lines


def _convert(args: argparse.Namespace) -> int:
    try:
        config = read_label_config(Path(args.label_config).read_text(encoding="utf-8"))
        mapper = LabelMapper(config.labels, config.aliases, fallback=args.fallback_label)
    except (OSError, LabelConfigError, ValueError) as error:
        print(f"error: {args.label_config}: {error}", file=sys.stderr)
        return 2
    tasks, bad, regions = [], 0, 0
    with open(
        args.input or sys.stdin.fileno(), encoding="utf-8", closefd=bool(args.input)
    ) as source:
        for task, report in convert_lines(source, config, mapper, args.model_version):
            where = f"line {report.line}" + (f" ({report.image})" if report.image else "")
            if task is None:
                bad += 1
                print(f"{where}: skipped: {report.error}", file=sys.stderr)
                continue
            tasks.append(task)
            regions += report.regions
            if args.verbose:
                for reason in report.dropped:
                    print(f"{where}: dropped {reason}", file=sys.stderr)
            elif report.dropped:
                print(
                    f"{where}: dropped {len(report.dropped)} item(s); -v lists them",
                    file=sys.stderr,
                )
    json.dump(tasks, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")
    print(
        f"wrote {len(tasks)} task(s) with {regions} region(s); skipped {bad} bad line(s)",
        file=sys.stderr,
    )
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="varco-labeler",
        description="Pre-label images in Label Studio with NCSOFT VARCO-VISION, and turn "
        "corrections into training data.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="turn raw VARCO-VISION outputs into a Label Studio import file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Turn raw VARCO-VISION outputs into a Label Studio import file (tasks with predictions).

Input: JSON Lines, one model output per line:
  {"image": PATH_OR_URL, "output": RAW_TEXT, "task": "grounding"|"ocr", "width"?: W, "height"?: H}
"task" defaults to what the label config asks for (OCR when it has a per-region TextArea).
Image sizes are read from local files when not given; URLs need "width" and "height".

Output: the import file on stdout; import it in Label Studio or with the SDK.
Bad lines are reported on stderr with their number and skipped (exit status 1);
the rest is still written. Phrases that match no label are dropped unless --fallback-label.""",
    )
    convert.add_argument("input", nargs="?", help="JSON Lines file (default: stdin)")
    convert.add_argument(
        "--label-config", required=True, metavar="FILE", help="the project's label config XML"
    )
    convert.add_argument(
        "--model-version",
        default="varco-import",
        help="model_version stored with each prediction (default: %(default)s)",
    )
    convert.add_argument(
        "--fallback-label",
        metavar="LABEL",
        help="label for grounded phrases that match no label (default: drop them)",
    )
    convert.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="list every dropped item, not just a count per line",
    )
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
