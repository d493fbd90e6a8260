"""The `frankenmoe` command: validate, schema, plan, build, lock, verify, study, sweep, push,
generate, repro-check, rebuild-check, fixtures.

Every failure the user can fix prints one line per problem on stderr, without a
traceback, and exits with the code of its class (the README's "Errors and exit codes").
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

# stages.STAGES, the build's stage list, is read when a command runs: the CLI gives it to the
# engine, and a test (or a plugin) may extend it after this import.
from frankenmoe import stages
from frankenmoe.checkpoints.loading import load_model
from frankenmoe.engine.build import build, default_layout, finished_results
from frankenmoe.engine.plan import format_plan, make_plan
from frankenmoe.engine.rebuild import rebuild_check
from frankenmoe.engine.repro import repro_check
from frankenmoe.errors import (
    EXIT_CODES,
    INTERNAL_ERROR,
    INTERRUPTED,
    EnvironmentProblem,
    FrankenmoeError,
    InputFileError,
    NotBuiltError,
    PublishError,
    UsageError,
    VerifyFailed,
    exit_code,
)
from frankenmoe.example.catalog import DOMAIN_SETS, EXAMPLES, ensure_example
from frankenmoe.experiments.executors import CONNECT_TIMEOUT_S, executor
from frankenmoe.experiments.study import parse_modes, run_study
from frankenmoe.experiments.sweep import check_size, load_sweep, run_sweep
from frankenmoe.measure.verdict import log_lines
from frankenmoe.provenance.lockfile import current_lock, lock_path, read_lock, require_match
from frankenmoe.recipe import load_recipe
from frankenmoe.recipe_schema import markdown, schema_text
from frankenmoe.stages.gates import routed_model
from frankenmoe.stages.gguf import check_files
from frankenmoe.stages.push import dry_run
from frankenmoe.stages.verify import candidate_inputs, candidate_problems, verify_from_results
from frankenmoe.support import settings
from frankenmoe.support.hashing import HashState
from frankenmoe.support.jsonio import write_json
from frankenmoe.support.progress import quiet_environment, quiet_libraries
from frankenmoe.support.secrets import scrub

FIXTURES_DIR = Path("fixtures")


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


def some_text(text: str) -> str:
    """An argparse type: text that is not empty or blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give some text")
    return text


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.recipes:
        try:
            recipe = load_recipe(path)
        except FrankenmoeError as e:
            for line in e.lines():
                print(f"{path}: {line}" if not line.startswith(str(path)) else line, file=sys.stderr)
            status = exit_code(e)
            continue
        print(
            f"{path}: ok ({recipe.name}: {len(recipe.experts)} experts, gate_mode {recipe.gate_mode}, "
            f"top-{recipe.experts_per_token})"
        )
        for warning in recipe.warnings:
            print(f"{path}: warning: {warning}")
    return status


def cmd_schema(args: argparse.Namespace) -> int:
    print(markdown() if args.markdown else schema_text(), end="")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    layout = default_layout(recipe)
    print(format_plan(recipe, layout, make_plan(recipe, layout, stages.STAGES, fetch=args.fetch)))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, root=args.paths_from)
    locked = read_lock(args.lock or lock_path(args.recipe)) if args.locked or args.lock else None
    build(recipe, default_layout(recipe), stages.STAGES, force=set(args.force or []), until=args.until, locked=locked)
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    layout = default_layout(recipe)
    state = HashState(layout.build_root / ".hash-state.json")
    lock = current_lock(recipe, state)
    state.save()
    path = lock_path(args.recipe)
    if args.check:
        require_match(read_lock(path), lock, f"{path} is out of date; run `frankenmoe lock {args.recipe}`")
        print(f"{path}: up to date")
        return 0
    write_json(path, lock)
    files = sum(len(m["files"]) for m in lock["models"].values()) + sum(
        len(v) for v in lock["data"].values() if isinstance(v, dict)
    )
    print(f"wrote {path}: {len(lock['models'])} models, {files} files pinned, {lock['platform']['cpu_capability']} CPU")
    return 0


def cmd_repro_check(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    work = args.work or default_layout(recipe).build_root / ".repro-check" / recipe.name
    repro_check(args.recipe, work, stages.STAGES)
    return 0


def cmd_rebuild_check(args: argparse.Namespace) -> int:
    work = args.work or settings.build_root() / ".rebuild-check"
    rebuild_check(args.dir, work, stages.STAGES, args.recipe_dir)
    return 0


def cmd_fixtures(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EnvironmentProblem(
            f"fixtures: --out {out}: cannot make it ({e.strerror}); give a writable folder"
        ) from None
    quiet_libraries()
    for name in args.only or EXAMPLES:
        ensure_example(name, out)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    quiet_libraries()
    layout = default_layout(recipe)
    if args.candidate is not None and args.candidate.suffix == ".gguf":
        return _verify_gguf(recipe, layout, args)
    done = finished_results(recipe, layout, stages.STAGES, candidate_inputs(args.candidate is None))
    if args.candidate is not None and (problems := candidate_problems(done, args.candidate)):
        raise VerifyFailed(problems, hint=None)
    out = args.out or layout.build / "verify-candidate"
    report = verify_from_results(done, recipe, args.candidate, out)
    print("\n".join(log_lines(report, "verify")))
    print(f"report: {out / 'verify.md'}")
    if report["failures"]:
        raise VerifyFailed(report["failures"], hint=f"see {out / 'verify.md'}")
    return 0


def _verify_gguf(recipe, layout, args: argparse.Namespace) -> int:
    """`verify --candidate FILE.gguf`: llama.cpp's checks of any GGUF file of this merge."""
    if not args.candidate.is_file():
        raise InputFileError(f"verify: {args.candidate}: no such file; give a .gguf file")
    done = finished_results(recipe, layout, stages.STAGES, ["gates", "evaluate"])
    out = args.out or layout.build / "verify-candidate"
    merged = routed_model(done["gates"])
    report = check_files(recipe.gguf, done["evaluate"], merged, {None: args.candidate}, out, out)
    print("\n".join(log_lines(report, "gguf")))
    print(f"report: {out / 'verify.md'}")
    if report["failures"]:
        raise VerifyFailed(report["failures"], hint=None)
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    quiet_libraries()
    modes = parse_modes(args.modes)
    out = run_study(recipe, modes, args.quantize, default_layout(recipe).build_root, stages.STAGES)
    print((out / "study.md").read_text(encoding="utf-8"), end="")
    print(f"study: {out / 'study.json'}, {out / 'study.png'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep, stages.STAGE_NAMES)
    check_size(sweep, args.yes)
    quiet_libraries()
    runner = executor(args.ray, args.max_parallel, timeout=args.ray_timeout)
    try:
        out = run_sweep(sweep, stages.STAGES, runner, settings.build_root())
    finally:
        runner.close()
    print((out / "sweep.md").read_text(encoding="utf-8"), end="")
    print(f"sweep: {out / 'sweep.json'}, {out / 'sweep.png'}")
    return failed_variants_code(out / "sweep.json")


def failed_variants_code(sweep_json: Path) -> int:
    """0 when every variant built, else the exit code of the first failed one's error."""
    doc = json.loads(sweep_json.read_text())
    failed = [r for r in doc["variants"] if r["state"] != "built"]
    if failed:
        print(f"sweep: {len(failed)} of {len(doc['variants'])} variants failed (see the table)", file=sys.stderr)
    return failed[0]["exit_code"] if failed else 0


def cmd_push(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    layout = default_layout(recipe)
    targets = recipe.publish.targets()
    if not targets:
        raise PublishError("publish: set publish.<folder>.repo_id in the recipe (merged, awq, ...) to push")
    if args.dry_run:
        for folder, repo_id in targets.items():
            if not (layout.dist / folder).is_dir():
                raise NotBuiltError(f"push: {layout.dist / folder} does not exist; build the recipe first")
            print("\n".join(dry_run(layout.dist / folder, repo_id)))
        return 0
    pushing = recipe.model_copy(update={"publish": recipe.publish.model_copy(update={"push": True})})
    build(pushing, layout, stages.STAGES)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    if not (args.dir / "config.json").is_file():
        raise InputFileError(
            f"generate: {args.dir}: not a model folder (no config.json); give dist/<name>/awq or dist/<name>/merged"
        )
    try:
        context = json.loads((args.dir / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        raise InputFileError(
            f"generate: {args.dir / 'config.json'}: not a JSON object; the folder is damaged"
        ) from None
    if isinstance(context, int) and args.max_new_tokens > context:
        raise UsageError(
            f"--max-new-tokens: {args.max_new_tokens} is more than the model's context ({context} tokens, "
            "max_position_embeddings); give at most that"
        )
    quiet_libraries()
    model = load_model(args.dir, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(args.dir)
    inputs = tokenizer(args.prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    print(tokenizer.decode(out[0], skip_special_tokens=True))
    return 0


# Operating-system errors the build expects from the machine: each has a remedy.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EMFILE,
    errno.ENFILE,
}


def os_error_line(e: OSError) -> str:
    """One line that says what to do about this operating-system error, by its kind."""
    where = f"{e.filename}: " if e.filename else ""
    hint = {
        errno.ENOSPC: "free some space, or point FRANKENMOE_BUILD_DIR / FRANKENMOE_DIST_DIR at a larger disk",
        errno.EDQUOT: "free some space, or point FRANKENMOE_BUILD_DIR / FRANKENMOE_DIST_DIR at a larger disk",
        errno.ENOENT: "check the path",
        errno.EACCES: "check its permissions",
        errno.EPERM: "check its permissions",
        errno.EROFS: "it is on a read-only file system; use a writable folder (FRANKENMOE_BUILD_DIR / "
        "FRANKENMOE_DIST_DIR move the build)",
    }.get(e.errno, "check the folder (FRANKENMOE_BUILD_DIR / FRANKENMOE_DIST_DIR move the build)")
    return f"{where}{e.strerror or e}; {hint}"


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


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except FrankenmoeError as e:
        for line in e.lines():
            print(scrub(f"error: {line}"), file=sys.stderr)
        return exit_code(e)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        return 141
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:  # not one the code expects from the machine: a bug
            return internal_error()
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return EXIT_CODES[EnvironmentProblem]
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume (finished stages are kept)", file=sys.stderr)
        return INTERRUPTED
    except Exception:  # a bug
        return internal_error()


def internal_error() -> int:
    """A bug, not a bad input: the traceback (never with a token in it) goes to a log
    file, stderr gets one line naming it, and the exit code is 1."""
    text = scrub(traceback.format_exc())
    name = f"internal-error-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    for folder in (settings.build_root() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            where = f"the traceback is in {folder / name}"
            break
        except OSError:
            continue
    else:
        where = "the traceback follows"
        print(text, file=sys.stderr, end="")
    last = text.strip().splitlines()[-1] if text.strip() else "unknown error"
    print(
        f"error: internal error ({last}): a bug in frankenmoe or a library, please report it; {where}",
        file=sys.stderr,
    )
    return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
