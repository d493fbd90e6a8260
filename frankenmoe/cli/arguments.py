"""The command line: subcommands, their arguments, and the argument types that refuse bad values in one line."""

from __future__ import annotations

import argparse
from pathlib import Path

# stages.STAGES, the build's stage list, is read when a command runs: the CLI gives it to the
# engine, and a test (or a plugin) may extend it after this import.
from frankenmoe import stages
from frankenmoe.cli.commands import (
    FIXTURES_DIR,
    cmd_build,
    cmd_fixtures,
    cmd_generate,
    cmd_lock,
    cmd_plan,
    cmd_push,
    cmd_rebuild_check,
    cmd_repro_check,
    cmd_route,
    cmd_schema,
    cmd_study,
    cmd_sweep,
    cmd_validate,
    cmd_verify,
)
from frankenmoe.example.catalog import DOMAIN_SETS, EXAMPLES
from frankenmoe.experiments.executors import CONNECT_TIMEOUT_S
from frankenmoe.experiments.held_out import TOKENS_PER_DOMAIN


class Parser(argparse.ArgumentParser):
    """argparse's own refusals said as every other usage problem is: one line, exit 2,
    before anything is loaded."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def whole_number(minimum: int):
    """An argparse type: a whole number of at least `minimum`, checked at parse time."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give {minimum} or more") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; give {minimum} or more")
        return value

    return parse


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value


def positive_count(text: str) -> int:
    """An argparse type: a whole number above 0."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def some_text(text: str) -> str:
    """An argparse type: text that is not empty or blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give some text")
    return text


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="frankenmoe", description="Build verified, reproducible 4-bit FrankenMoE models from a recipe.")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check recipes; one line per problem, exit 2 if any")
    v.add_argument("recipes", nargs="+", type=Path)
    v.set_defaults(func=cmd_validate)

    sc = sub.add_parser("schema", help="print the recipe's JSON Schema (docs/recipe.schema.json), for editors")
    sc.add_argument("--markdown", action="store_true", help="print the recipe reference instead (docs/recipes.md)")
    sc.set_defaults(func=cmd_schema)

    pl = sub.add_parser("plan", help="list the stages, which are cached, and the disk they need")
    pl.add_argument("recipe", type=Path)
    pl.add_argument("--fetch", action="store_true", help="read source configs from the Hub when not cached locally")
    pl.set_defaults(func=cmd_plan)

    b = sub.add_parser("build", help="run the stages (cached ones are skipped)")
    b.add_argument("recipe", type=Path)
    b.add_argument(
        "--force",
        action="append",
        choices=stages.STAGE_NAMES,
        metavar="STAGE",
        help="rerun STAGE even if cached (repeatable)",
    )
    b.add_argument(
        "--until", choices=stages.STAGE_NAMES, metavar="STAGE", help="run only STAGE and the stages it needs"
    )
    b.add_argument(
        "--locked", action="store_true", help="refuse to start unless inputs and tool versions match RECIPE's lock file"
    )
    b.add_argument(
        "--lock", type=Path, help="the lock file for --locked (default: <recipe stem>.lock.json beside the recipe)"
    )
    b.add_argument(
        "--paths-from",
        type=Path,
        metavar="DIR",
        help="resolve the recipe's relative paths against DIR instead of the recipe file's folder",
    )
    b.set_defaults(func=cmd_build)

    lk = sub.add_parser(
        "lock", help="write <recipe stem>.lock.json: model commits, file hashes, tool versions, platform"
    )
    lk.add_argument("recipe", type=Path)
    lk.add_argument(
        "--check", action="store_true", help="only compare with the existing lock file; exit 8 if it differs"
    )
    lk.set_defaults(func=cmd_lock)

    rc = sub.add_parser("repro-check", help="build twice in fresh folders and compare every published file")
    rc.add_argument("recipe", type=Path)
    rc.add_argument(
        "--work",
        type=Path,
        help="where the two builds go (default: build/.repro-check/<name>); a new or empty folder, or one an "
        "earlier repro-check made (its builds are replaced); a folder holding other files is refused",
    )
    rc.set_defaults(func=cmd_repro_check)

    rb = sub.add_parser("rebuild-check", help="rebuild a published folder from its build.json and compare the bytes")
    rb.add_argument("dir", type=Path)
    rb.add_argument(
        "--work",
        type=Path,
        help="where the rebuild goes (default: build/.rebuild-check); a new or empty folder, or one an earlier "
        "rebuild-check made (its rebuild is replaced); a folder holding other files is refused",
    )
    rb.add_argument(
        "--recipe-dir",
        type=Path,
        default=Path("."),
        metavar="DIR",
        help="the folder the original recipe's relative paths are relative to (default: the current folder; "
        "for this repository's examples: recipes)",
    )
    rb.set_defaults(func=cmd_rebuild_check)

    vf = sub.add_parser(
        "verify", help="re-run the verify checks on the built 4-bit model or on any AWQ folder, without rebuilding"
    )
    vf.add_argument("recipe", type=Path)
    vf.add_argument(
        "--candidate",
        type=Path,
        help="a folder in the published AWQ layout, or a .gguf file of this merge (default: this recipe's build)",
    )
    vf.add_argument(
        "--out", type=Path, help="where to write verify.json/.md/routing.png (default: build/<name>/verify-candidate)"
    )
    vf.set_defaults(func=cmd_verify)

    st = sub.add_parser(
        "study", help="build the recipe once per gate mode and compare perplexity, routing and dead experts"
    )
    st.add_argument("recipe", type=Path)
    st.add_argument(
        "--modes",
        default="hidden,cheap_embed,random,fitted",
        help="comma-separated: hidden, cheap_embed, random, fitted",
    )
    st.add_argument("--quantize", action="store_true", help="also quantize each mode and compare its 4-bit parity")
    st.add_argument(
        "--tokens",
        type=positive_count,
        default=TOKENS_PER_DOMAIN,
        help="held-out tokens per domain for the paired comparison (fewer where verify.files ends)",
    )
    st.set_defaults(func=cmd_study)

    sw = sub.add_parser(
        "sweep",
        help="build every variant a sweep file names (recipe key paths with lists of values) over one cache, "
        "in this process or on a Ray cluster, and compare them",
    )
    sw.add_argument("sweep", type=Path, help="the sweep file (recipe, axes, until)")
    sw.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the stages as Ray tasks: local (a cluster of this machine on 127.0.0.1), auto, or host:port",
    )
    sw.add_argument(
        "--max-parallel", type=whole_number(1), metavar="N", help="with --ray: at most N stage runs at once"
    )
    sw.add_argument(
        "--ray-timeout",
        type=positive_seconds,
        default=CONNECT_TIMEOUT_S,
        metavar="SECONDS",
        help="with --ray ADDRESS: give up when the cluster has not answered after this long "
        f"(default {CONNECT_TIMEOUT_S:g})",
    )
    sw.add_argument(
        "--yes",
        action="store_true",
        help="build more variants than the sweep allows (256, or its max_variants); the plan is printed first",
    )
    sw.set_defaults(func=cmd_sweep)

    ps = sub.add_parser("push", help="push the built folders to the Hub (HF_ENDPOINT, HF_TOKEN or your login)")
    ps.add_argument("recipe", type=Path)
    ps.add_argument("--dry-run", action="store_true", help="list repos, files, sizes and LFS use; write nothing")
    ps.set_defaults(func=cmd_push)

    g = sub.add_parser("generate", help="greedy text generation from a published folder (16-bit or AWQ), on the CPU")
    g.add_argument("dir", type=Path)
    g.add_argument("--prompt", required=True, type=some_text)
    g.add_argument("--max-new-tokens", type=whole_number(1), default=32, metavar="N")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser(
        "route", help="write the routing page (routing.html) of a published MoE folder over any text, on the CPU"
    )
    r.add_argument("dir", type=Path, help="dist/<name>/merged, awq or w4a16")
    r.add_argument("--text", required=True, type=Path, help="a .txt or .jsonl file (a `domain` field splits it)")
    r.add_argument("--out", type=Path, help="default: build/route/<name>-<folder>-<text>.html")
    r.add_argument("--seq-len", type=whole_number(2), default=256, metavar="N", help="tokens per window (256)")
    r.add_argument("--max-tokens", type=whole_number(1), default=4096, metavar="N", help="tokens at most (4096)")
    r.set_defaults(func=cmd_route)

    f = sub.add_parser("fixtures", help="make the offline examples' models in OUT/<example> (cached by their inputs)")
    f.add_argument("--out", default=str(FIXTURES_DIR))
    f.add_argument(
        "--only",
        action="append",
        choices=(*EXAMPLES, *DOMAIN_SETS),
        help="make only this example's models (repeatable): tiny (tests), smollm2 (the real example), "
        "smollm2-docs or smollm2-source (three experts on Debian text each; only made when named)",
    )
    f.set_defaults(func=cmd_fixtures)
    return p
