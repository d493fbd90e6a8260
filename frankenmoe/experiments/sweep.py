"""`frankenmoe sweep SWEEP.yaml`: many variants of one recipe, built over one cache,
in this process or on a Ray cluster, compared in one table and one figure.

SWEEP.yaml names a recipe and axes, each a recipe key path with a list of values:

    recipe: smollm2-2x.yaml          # relative to the sweep file
    axes:
      gate_mode: [hidden, cheap_embed, random]
      gates.fit: [false, true]
    until: verify                    # optional: the last stage each variant builds
    max_variants: 300                # optional: allow more than 256 variants (or --yes)

Every combination of the axes' values (in the order written) is a full recipe,
validated as a recipe is; its name is its index and values (`v01-hidden-false`),
so a sweep names its variants the same way every time. The variants keep the
recipe's name for the cache: stages that do not depend on an axis (resolve,
baseline, a merge the fit does not change) are built once for all of them. Each
variant publishes into build/<sweep>/variants/<variant>/<recipe name>/. A variant that fails
(a value its recipe's checks refuse, a failed verify) is a row with its error;
the others go on.

Before anything runs the sweep says how many stage runs its variants need once
shared and about how long they take at this cache's recorded stage times; a sweep of
more than MAX_VARIANTS variants is refused unless the sweep file's `max_variants`
or `--yes` allows it (two axes of 100 values are 10,000 builds: days of work).

Output, build/<sweep>/sweep.json, sweep.md and sweep.png. Two sweeps of the same
inputs give the same sweep.json, in one process or on Ray, except under the keys
`wall_s` and `nodes`.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import BaseModel

from frankenmoe.engine.cache import RECORD, Layout
from frankenmoe.engine.graph import dependencies
from frankenmoe.errors import FrankenmoeError, RecipeError, UsageError, exit_code
from frankenmoe.experiments.routing_pages import write_routing_pages
from frankenmoe.experiments.variants import Executor, Outcome, Variant, build_variants, sweep_stages
from frankenmoe.measure.comparison import summarize
from frankenmoe.measure.sweep_report import render_sweep, render_sweep_png, write_report
from frankenmoe.recipe import NAME_RE, Recipe, load_raw, parse_recipe
from frankenmoe.stages.evaluate import reference
from frankenmoe.stages.verify import report_dir
from frankenmoe.support.hashing import sha256_json
from frankenmoe.support.secrets import scrub

KEYS = ("recipe", "name", "axes", "until", "max_variants")
MAX_VARIANTS = 256  # more only where the sweep file's max_variants or --yes says so
TIMINGS = ("wall_s", "nodes")  # what differs between two sweeps of the same inputs


@dataclass(frozen=True)
class Sweep:
    name: str
    recipe_file: Path
    axes: dict[str, list[Any]]
    until: str | None
    file: Path
    max_variants: int = MAX_VARIANTS


def axis_problem(path: str) -> str | None:
    """Why `path` names no recipe key (None when it does): each dotted part a field
    of the section before it; a list or value field ends the path."""
    model: type[BaseModel] | None = Recipe
    for i, part in enumerate(path.split(".")):
        if model is None:
            return f"{'.'.join(path.split('.')[:i])} is a value, not a section"
        if part == "name":
            return "a variant's name is set by the sweep"
        field = model.model_fields.get(part)
        if field is None:
            return f"{part!r} is not a key of {'the recipe' if i == 0 else '.'.join(path.split('.')[:i])}"
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return None


def load_sweep(path: Path, stage_names: Sequence[str]) -> Sweep:
    """The sweep file, or a RecipeError with every problem, each with its key path."""
    raw = load_raw(path)
    where = str(path)
    problems = [f"{where}: {k}: unknown key; a sweep has {', '.join(KEYS)}" for k in raw if k not in KEYS]
    recipe = raw.get("recipe")
    recipe_file = None
    if not isinstance(recipe, str) or not recipe:
        problems.append(f"{where}: recipe: required, the path of the recipe to vary")
    else:
        recipe_file = (Path(path).parent / recipe).resolve()
        if not recipe_file.is_file():
            problems.append(f"{where}: recipe: {recipe_file} not found")
    name = raw.get("name", Path(path).stem)
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        problems.append(f"{where}: name: {name!r} is not a folder name (letters, digits, '.', '_', '-')")
    axes = raw.get("axes")
    if not isinstance(axes, dict) or not axes:
        problems.append(f"{where}: axes: required, a mapping of recipe key paths to lists of values")
        axes = {}
    for key, values in axes.items():
        why = axis_problem(str(key))
        if why:
            problems.append(f"{where}: axes.{key}: {why}")
        if not isinstance(values, list) or not values:
            problems.append(f"{where}: axes.{key}: a list of at least one value")
        elif len({sha256_json(v) for v in values}) < len(values):
            problems.append(f"{where}: axes.{key}: a value is listed twice")
    until = raw.get("until")
    if until is not None and until not in stage_names:
        problems.append(f"{where}: until: unknown stage {until!r}; stages are {', '.join(stage_names)}")
    most = raw.get("max_variants", MAX_VARIANTS)
    if not isinstance(most, int) or isinstance(most, bool) or most < 1:
        problems.append(f"{where}: max_variants: {most!r} is not a number of variants; give 1 or more")
    if problems:
        raise RecipeError(problems)
    assert recipe_file is not None
    return Sweep(name, recipe_file, {str(k): v for k, v in axes.items()}, until, Path(path), most)


def check_size(sweep: Sweep, yes: bool) -> int:
    """The number of variants, or a UsageError when it is more than the sweep allows."""
    count = math.prod(len(v) for v in sweep.axes.values())
    if count > sweep.max_variants and not yes:
        sizes = " x ".join(f"{k} {len(v)}" for k, v in sweep.axes.items())
        raise UsageError(
            f"{sweep.file}: {count} variants ({sizes}), more than {sweep.max_variants}: each is a build of its own; "
            f"to run them all, set max_variants: {count} in the sweep file or pass --yes"
        )
    return count


def stage_runs(planned: list[Planned], stages, until: str | None) -> dict[str, int]:
    """Per stage, how many runs the valid variants need once shared: two variants
    share a run where the stage's recipe section and all it reads are the same (the
    keys themselves are known only as the stages finish, so this is a plan)."""
    runs: dict[str, set[str]] = defaultdict(set)
    for p in planned:
        if p.variant is None:
            continue
        chosen = sweep_stages(stages, p.variant.recipe, until)
        mine: dict[str, str] = {}
        for stage in chosen:
            reads = [mine[d] for d in dependencies(stage, chosen)]
            mine[stage.name] = sha256_json([stage.name, stage.config(p.variant.recipe), reads])
            runs[stage.name].add(mine[stage.name])
    return {name: len(keys) for name, keys in runs.items()}


def recorded_seconds(build_root: Path) -> dict[str, float]:
    """Per stage, the median time of every run this cache has a record of."""
    times: dict[str, list[float]] = defaultdict(list)
    for record in build_root.glob(f"*/*/*/{RECORD}"):
        try:
            times[record.parent.parent.name].append(float(json.loads(record.read_text())["wall_s"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return {stage: statistics.median(t) for stage, t in times.items()}


def plan_line(runs: dict[str, int], seconds: dict[str, float]) -> str:
    """How many stage runs, and about how long at the recorded times, in one line."""
    if not runs:
        return "nothing to build: no variant is valid"
    each = ", ".join(f"{name} {n}" for name, n in runs.items())
    known = sum(n * seconds[name] for name, n in runs.items() if name in seconds)
    unknown = [name for name in runs if name not in seconds]
    estimate = f"about {known / 3600:.1f} h at this cache's median stage times" if len(unknown) < len(runs) else ""
    missing = f"no recorded time for {', '.join(unknown)}" if unknown else ""
    return (
        f"{sum(runs.values())} stage runs once shared ({each}); "
        + "; ".join(x for x in (estimate, missing) if x)
        + " (a cached run takes seconds)"
    )


def slug(value: Any) -> str:
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = re.sub(r"[^a-z0-9._]+", "_", str(value).lower()).strip("_.")
        if text and len(text) <= 24:
            return text
    return "x" + sha256_json(value)[:8]


def with_value(raw: dict, path: str, value: Any) -> dict:
    out = copy.deepcopy(raw)
    node = out
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else node
    node[last] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Planned:
    """A variant, or why its recipe is refused."""

    name: str
    label: str
    values: dict[str, Any]
    variant: Variant | None
    error: list[str] | None
    code: int = 0


@dataclass(frozen=True)
class Point:
    """One variant to build: its folder name, its label, and the recipe values it sets
    (each a recipe key path)."""

    name: str
    label: str
    values: dict[str, Any]


def sweep_points(sweep: Sweep) -> list[Point]:
    """Every combination of the axes, in the order written, named by its index and values."""
    out = []
    for i, combo in enumerate(itertools.product(*sweep.axes.values()), start=1):
        values = dict(zip(sweep.axes, combo))
        label = ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items())
        out.append(Point(f"v{i:02d}-" + "-".join(slug(v) for v in combo), label, values))
    return out


def plan_variants(sweep: Sweep, build_root: Path) -> list[Planned]:
    """The sweep's variants, each publishing into build/<sweep>/variants/<variant>/."""
    return plan_points(
        sweep.recipe_file, sweep_points(sweep), build_root, build_root / sweep.name / "variants", sweep.name
    )


def plan_points(
    recipe_file: Path, points: Sequence[Point], build_root: Path, dists: Path, prefix: str
) -> list[Planned]:
    """Each point as a recipe validated as a recipe is, publishing into dists/<point name>
    (`prefix.<point name>`: its lock and published.json beside the recipe's cache)."""
    raw = load_raw(recipe_file)
    default_name = recipe_file.stem
    out = []
    for point in points:
        data = raw
        for key, value in point.values.items():
            data = with_value(data, key, value)
        data.pop("name", None)
        try:
            recipe = parse_recipe({**data, "name": raw.get("name", default_name)}, default_name, recipe_file.parent)
        except FrankenmoeError as e:
            out.append(Planned(point.name, point.label, point.values, None, e.lines(), exit_code(e)))
            continue
        layout = Layout(build_root, dists / point.name, recipe.name, variant=f"{prefix}.{point.name}")
        out.append(
            Planned(point.name, point.label, point.values, Variant(point.name, point.label, recipe, layout), None)
        )
    return out


def variant_row(planned: Planned, outcome: Outcome | None, dead_share: float) -> dict:
    """One variant's row: what it measured (as study does), its 4-bit size and loss, or its error."""
    row: dict[str, Any] = {"name": planned.name, "label": planned.label, "values": planned.values}
    if outcome is None:
        return {**row, "state": "failed", "error": planned.error, "exit_code": planned.code, "keys": {}}
    results = outcome.results
    row["keys"] = {name: res.key for name, res in sorted(results.items())}
    row["nodes"] = dict(sorted(outcome.nodes.items()))
    row["wall_s"] = {k: round(v, 1) for k, v in sorted(outcome.seconds.items())}
    row["state"] = "built" if outcome.ok else "failed"
    if outcome.error:
        row["error"], row["exit_code"] = outcome.error, outcome.code
    if "evaluate" in results:
        verify = (
            json.loads((report_dir(results["verify"]) / "verify.json").read_text()) if "verify" in results else None
        )
        row["measured"] = summarize(reference(results["evaluate"]), verify, dead_share)
    if "quantize" in results:
        row["awq_bytes"] = sum(
            m["size"] for rel, m in results["quantize"].files.items() if rel.endswith(".safetensors")
        )
    return row


def pareto(rows: list[dict]) -> list[str]:
    """The variants no other variant beats on both 4-bit size and 4-bit loss (mean KL)."""
    points = {
        r["name"]: (r["awq_bytes"], r["measured"]["quantized"]["kl_mean"])
        for r in rows
        if "awq_bytes" in r and "quantized" in r.get("measured", {})
    }
    return sorted(
        n
        for n, (s, k) in points.items()
        if not any((s2 <= s and k2 <= k) and (s2, k2) != (s, k) for s2, k2 in points.values())
    )


def measure_variants(
    planned: list[Planned],
    stages,
    until: str | None,
    executor: Executor,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], dict[str, Outcome]]:
    """Build every valid variant over the shared cache: one row per variant, in order
    (what it measured, or its error), and each built variant's outcome."""
    variants = [p.variant for p in planned if p.variant is not None]
    outcomes = build_variants(variants, stages, until, executor, log)
    share = variants[0].recipe.verify.dead_expert_share if variants else 0.0
    return [variant_row(p, outcomes.get(p.name), share) for p in planned], outcomes


def traces(rows: list[dict], outcomes: dict[str, Outcome], log_file: Path) -> list[str]:
    """Each bug's traceback, for the log; the failed row's error then says where it is."""
    out = []
    for r in rows:
        if (o := outcomes.get(r["name"])) and o.trace:
            out.append(f"== {r['name']} ==\n{scrub(o.trace)}")
            r["error"] = [*r["error"], f"traceback in {log_file}"]
    return out


def run_sweep(
    sweep: Sweep,
    stages,
    executor: Executor,
    build_root: Path,
    log: Callable[[str], None] = print,
) -> Path:
    """Build every variant, write build/<sweep>/sweep.{json,md,png} and each variant's
    routing page (routing/<variant>.html); returns the folder."""
    planned = plan_variants(sweep, build_root)
    valid = sum(p.variant is not None for p in planned)
    log(f"sweep     {sweep.name}: {len(planned)} variants of {sweep.recipe_file.name}, {valid} valid")
    log(f"sweep     {sweep.name}: {plan_line(stage_runs(planned, stages, sweep.until), recorded_seconds(build_root))}")
    rows, outcomes = measure_variants(planned, stages, sweep.until, executor, log)
    out = build_root / sweep.name
    bugs = traces(rows, outcomes, out / "sweep.log")
    doc = {
        "sweep": sweep.name,
        "recipe": sweep.recipe_file.name,
        "axes": sweep.axes,
        "until": sweep.until,
        "variants": rows,
        "pareto": pareto(rows),
        "routing_pages": write_routing_pages([p.variant for p in planned if p.variant], outcomes, out),
    }
    write_report(out, "sweep", doc, render_sweep, render_sweep_png, bugs)
    return out


def without_timings(doc: dict) -> dict:
    """What a sweep measured: the same for two sweeps of the same inputs, wherever they ran."""
    return {**doc, "variants": [{k: v for k, v in r.items() if k not in TIMINGS} for r in doc["variants"]]}
