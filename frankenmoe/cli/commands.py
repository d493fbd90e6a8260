"""What each `frankenmoe` command does, given its parsed arguments; the exit code is returned."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# stages.STAGES, the build's stage list, is read when a command runs: the CLI gives it to the
# engine, and a test (or a plugin) may extend it after this import.
from frankenmoe import stages
from frankenmoe.checkpoints.loading import load_model
from frankenmoe.engine.build import build, default_layout, finished_results
from frankenmoe.engine.cache import Layout
from frankenmoe.engine.plan import format_plan, make_plan
from frankenmoe.engine.rebuild import rebuild_check
from frankenmoe.engine.repro import repro_check
from frankenmoe.errors import (
    EnvironmentProblem,
    FrankenmoeError,
    InputFileError,
    NotBuiltError,
    PublishError,
    UsageError,
    VerifyFailed,
    exit_code,
)
from frankenmoe.example.catalog import EXAMPLES, ensure_example
from frankenmoe.experiments.executors import executor
from frankenmoe.experiments.study import parse_modes, run_study
from frankenmoe.experiments.sweep import check_size, load_sweep, run_sweep
from frankenmoe.hub.push import dry_run, push_build
from frankenmoe.measure.verdict import log_lines
from frankenmoe.provenance.lockfile import lock_path, read_lock, require_match
from frankenmoe.recipe import Recipe, load_recipe
from frankenmoe.recipe_schema import markdown, schema_text
from frankenmoe.routing.route_page import route_folder
from frankenmoe.stages.base import StageResult, lock_now
from frankenmoe.stages.gates import routed_model
from frankenmoe.stages.gguf import check_files
from frankenmoe.stages.manifest import manifest_build_id, published_manifests
from frankenmoe.stages.verify import candidate_inputs, candidate_problems, verify_from_results
from frankenmoe.support import settings
from frankenmoe.support.hashing import HashState
from frankenmoe.support.jsonio import write_json
from frankenmoe.support.progress import quiet_libraries
from frankenmoe.support.secrets import scrub

FIXTURES_DIR = Path("fixtures")


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
    layout = default_layout(recipe)
    done = build(recipe, layout, stages.STAGES, force=set(args.force or []), until=args.until, locked=locked)
    if "manifest" in done:  # a whole build, published
        if recipe.publish.push:
            push_finished(recipe, layout, done["manifest"])
        elif recipe.publish.targets():
            print("push      publish.push is false: nothing pushed (frankenmoe push RECIPE pushes this build)")
    return 0


def push_finished(recipe: Recipe, layout: Layout, manifest: StageResult) -> None:
    """Push what the recipe's finished build published: each folder's build.json as the
    manifest stage wrote it names the folder's files and the checks it passed."""
    state = HashState(layout.build_root / ".hash-state.json")
    push_build(recipe.publish, layout.dist, published_manifests(manifest), manifest_build_id(manifest), state)
    state.save()


def cmd_lock(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    layout = default_layout(recipe)
    state = HashState(layout.build_root / ".hash-state.json")
    lock = lock_now(stages.STAGES, recipe, state)
    state.save()
    path = lock_path(args.recipe)
    if args.check:
        require_match(read_lock(path), lock, f"{path} is out of date; run `frankenmoe lock {args.recipe}`")
        print(f"{path}: up to date")
        return 0
    write_json(path, lock)
    models = lock["stages"]["resolve"]
    print(
        f"wrote {path}: {len(models)} models, the inputs of {len(lock['stages'])} stages, {len(lock['packages'])} "
        f"packages pinned, {lock['platform']['cpu_capability']} CPU"
    )
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
    root = default_layout(recipe).build_root
    out, failed = run_study(args.recipe, recipe, modes, args.quantize, root, stages.STAGES, tokens=args.tokens)
    if failed is not None:  # the failed mode's error, as `frankenmoe build` gives it
        for line in failed["error"]:
            print(scrub(f"error: {line}"), file=sys.stderr)
        return failed["exit_code"]
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
    push_finished(recipe, layout, finished_results(recipe, layout, stages.STAGES, ["manifest"])["manifest"])
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


def cmd_route(args: argparse.Namespace) -> int:
    out = args.out or settings.build_root() / "route" / f"{args.dir.parent.name}-{args.dir.name}-{args.text.stem}.html"
    quiet_libraries()
    page = route_folder(args.dir, args.text, out, args.seq_len, args.max_tokens, log=print)
    print(f"route     wrote {page.path} ({page.size / 1e6:.2f} MB, {page.tokens} tokens in {page.windows} windows)")
    return 0
