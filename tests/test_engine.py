"""The engine over fake stages: it runs whatever list it is given, with no global
stage list and no stage named, and the real list is well-formed."""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frankenmoe.engine.build import build, finished_results
from frankenmoe.engine.cache import Layout
from frankenmoe.engine.graph import dependencies, enabled_stages, graph_problems, select_stages
from frankenmoe.engine.plan import make_plan
from frankenmoe.errors import EnvironmentProblem, NotBuiltError, UsageError, VerifyFailed
from frankenmoe.stages import STAGES
from frankenmoe.stages.base import Facts, Stage
from tests.test_build_cache import RECIPE

ROOT = Path(__file__).resolve().parent.parent


class Seen(Facts):
    inputs: list[str]
    folders: list[str]


class Fake(Stage):
    """Writes `<name>.txt` holding its own name and its inputs' keys."""

    def __init__(self, name, depends=(), publishes=None, enabled=True, fail=None, all_earlier=False, sized=None):
        self.name, self.depends = name, tuple(depends)
        self.publishes = publishes or {}
        self.depends_on_all_earlier = all_earlier
        self._enabled, self._fail, self._sized = enabled, fail, sized
        self.runs = 0

    def config(self, recipe):
        return {"name": self.name}

    def enabled(self, recipe):
        return self._enabled

    def estimate_bytes(self, recipe, inputs, base_config):
        return self._sized

    def blocking_error(self, result):
        return VerifyFailed([self._fail]) if self._fail else None

    def run(self, ctx):
        self.runs += 1
        out = ctx.out / "files"
        out.mkdir()
        (out / f"{self.name}.txt").write_text(json.dumps({k: r.key for k, r in sorted(ctx.inputs.items())}))
        return Seen(inputs=sorted(ctx.inputs), folders=ctx.folders())


@pytest.fixture
def layout(tmp_path):
    return Layout(tmp_path / "build", tmp_path / "dist", "unit")


def quiet(_):
    pass


def chain():
    return [
        Fake("a", publishes={"out": "files"}),
        Fake("b", ["a"], publishes={"out": "files"}),
        Fake("c", ["a"], publishes={"extra": "files"}),
        Fake("all", all_earlier=True),
    ]


def test_runs_the_list_it_is_given_caches_and_publishes(layout):
    stages = chain()
    done = build(RECIPE, layout, stages, log=quiet)
    assert list(done) == ["a", "b", "c", "all"]
    assert done["all"].result["inputs"] == ["a", "b", "c"]
    # A stage sees the folders its inputs put files in: none before any ran, all at the end.
    assert done["a"].result["folders"] == [] and done["all"].result["folders"] == ["extra", "out"]
    assert sorted(p.name for p in (layout.dist / "out").iterdir()) == ["a.txt", "b.txt"]
    assert [p.name for p in (layout.dist / "extra").iterdir()] == ["c.txt"]
    build(RECIPE, layout, stages, log=quiet)
    assert [s.runs for s in stages] == [1, 1, 1, 1]
    build(RECIPE, layout, stages, force={"b"}, log=quiet)
    assert [s.runs for s in stages] == [1, 2, 1, 1]


class Noisy(Fake):
    """Changes what a stage may change in its process, and notes what the engine set up for it."""

    def run(self, ctx):
        from transformers.utils import logging as hf_logging

        self.seen = {
            "bars": hf_logging.is_progress_bar_enabled(),
            "transformers": logging.getLogger("transformers").level,
        }
        os.environ["FRANKENMOE_TEST_LEFT_BEHIND"] = "1"
        del os.environ["FRANKENMOE_TEST_KEPT"]
        logging.getLogger("mergekit").setLevel(logging.WARNING)
        logging.getLogger("frankenmoe_test_new").setLevel(logging.ERROR)
        return super().run(ctx)


def test_a_stage_gives_back_the_environment_logger_levels_and_progress_bars(layout, monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("FRANKENMOE_TEST_KEPT", "yes")
    monkeypatch.setattr(logging.getLogger("mergekit"), "level", logging.DEBUG)
    monkeypatch.setattr(logging.getLogger("transformers"), "level", logging.INFO)
    hf_logging.enable_progress_bar()
    stage = Noisy("a")
    build(RECIPE, layout, [stage], log=quiet)
    assert stage.seen == {"bars": False, "transformers": logging.ERROR}  # quieted for the stage's run
    assert os.environ.get("FRANKENMOE_TEST_KEPT") == "yes" and "FRANKENMOE_TEST_LEFT_BEHIND" not in os.environ
    assert logging.getLogger("mergekit").level == logging.DEBUG
    assert logging.getLogger("transformers").level == logging.INFO
    assert logging.getLogger("frankenmoe_test_new").level == logging.NOTSET
    assert hf_logging.is_progress_bar_enabled()


class Ordered(Facts):
    counts: dict[str, int]


class Writes(Fake):
    """Returns a mapping whose keys are not in sorted order."""

    def run(self, ctx):
        return Ordered(counts={"zeta": 1, "alpha": 2})


class Reads(Fake):
    """Records the key order it was handed."""

    seen: list[list[str]] = []

    def run(self, ctx):
        Reads.seen.append(list(ctx.inputs["w"].result["counts"]))
        return Seen(inputs=[], folders=[])


def test_a_stage_reads_its_inputs_as_a_cached_build_would(layout):
    """Whether an input ran just now or came from the cache, a stage is handed the
    record as written (keys sorted): its output cannot depend on which (a card whose
    evals were cached once listed its models in another order than a fresh build)."""
    Reads.seen = []
    build(RECIPE, layout, [Writes("w"), Reads("r", ["w"])], log=quiet)
    (
        layout.stage_dir("r") / next(p.name for p in layout.stage_dir("r").iterdir() if not p.name.startswith("."))
    ).rename(layout.stage_dir("r") / "gone")
    build(RECIPE, layout, [Writes("w"), Reads("r", ["w"])], log=quiet)
    assert Reads.seen == [["alpha", "zeta"], ["alpha", "zeta"]]


def test_until_selects_a_stage_and_what_it_needs(layout):
    stages = chain()
    assert [s.name for s in select_stages(stages, "c")] == ["a", "c"]
    assert [s.name for s in select_stages(stages, "all")] == ["a", "b", "c", "all"]
    build(RECIPE, layout, stages, until="c", log=quiet)
    assert [s.runs for s in stages] == [1, 0, 1, 0]


def test_unknown_stage_names_are_usage_errors_listing_the_stages(layout):
    with pytest.raises(UsageError, match="--until: unknown stage 'zz'; stages are a, b, c, all"):
        build(RECIPE, layout, chain(), until="zz", log=quiet)
    with pytest.raises(UsageError, match="--force: unknown stage 'zz'"):
        build(RECIPE, layout, chain(), force={"zz"}, log=quiet)


def test_a_stage_the_recipe_switches_off_is_left_out_with_what_needs_it(layout):
    stages = [Fake("a"), Fake("off", ["a"], enabled=False), Fake("needs-off", ["off"]), Fake("all", all_earlier=True)]
    assert [s.name for s in enabled_stages(stages, RECIPE)] == ["a", "all"]
    done = build(RECIPE, layout, stages, log=quiet)
    assert done["all"].result["inputs"] == ["a"]
    with pytest.raises(UsageError, match="switched off"):
        build(RECIPE, layout, stages, until="off", log=quiet)


def test_a_blocking_error_stops_the_build_after_publishing_its_report(layout):
    stages = [
        Fake("a", publishes={"out": "files"}),
        Fake("check", ["a"], publishes={"out": "files"}, fail="x"),
        Fake("z"),
    ]
    with pytest.raises(VerifyFailed):
        build(RECIPE, layout, stages, log=quiet)
    assert (layout.dist / "out" / "check.txt").is_file()
    assert stages[2].runs == 0


def test_cached_results_and_plan_use_the_builds_keys(layout):
    stages = chain()
    with pytest.raises(NotBuiltError, match="a: not built"):
        finished_results(RECIPE, layout, stages, ["b"])
    rows = make_plan(RECIPE, layout, stages)
    assert [r.status for r in rows] == ["will run"] * 4
    done = build(RECIPE, layout, stages, log=quiet)
    found = finished_results(RECIPE, layout, stages, ["b"])
    assert {k: r.key for k, r in found.items()} == {k: done[k].key for k in ("a", "b")}
    assert [(r.status, r.key) for r in make_plan(RECIPE, layout, stages)] == [
        ("cached", done[s.name].key) for s in stages
    ]


def test_plan_sizes_come_from_the_stages_hook(layout):
    rows = make_plan(RECIPE, layout, [Fake("a", sized=123), Fake("b")])
    assert [r.bytes for r in rows] == [123, None]


def test_graph_problems_are_found():
    assert graph_problems([Fake("a", ["b"]), Fake("b")]) == [
        "stage 'a' depends on 'b', which is not an earlier stage in the list"
    ]
    assert graph_problems([Fake("a"), Fake("a")]) == ["stage 'a' is listed twice"]


def test_the_real_stage_list_is_well_formed():
    assert graph_problems(STAGES) == []
    for stage in STAGES:
        assert all(d in [s.name for s in STAGES] for d in dependencies(stage, STAGES))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_engine_names_no_stage_and_stages_see_only_the_interface():
    for path in (ROOT / "frankenmoe" / "engine").glob("*.py"):
        stage_imports = {m for m in _imports(path) if m.startswith("frankenmoe.stages")}
        assert stage_imports <= {"frankenmoe.stages.base"}, f"{path.name} imports {stage_imports}"
    for path in (ROOT / "frankenmoe" / "stages").glob("*.py"):
        engine = {m for m in _imports(path) if m.startswith("frankenmoe.engine")}
        assert not engine, f"stage {path.name} imports the engine: {engine}"


def test_the_package_import_graph_has_no_cycle():
    modules = {}
    for path in [*(ROOT / "frankenmoe").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    state: dict[str, int] = {}

    def visit(n, trail):
        if state.get(n) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*trail, n]))
        if state.get(n) == 2:
            return
        state[n] = 1
        for d in sorted(graph[n]):
            visit(d, [*trail, n])
        state[n] = 2

    for n in sorted(graph):
        visit(n, [])


# The package's rooms, bottom to top: a module may import only from a room below its own
# (or from its own room). What a lower room needs from a higher one is passed in, or the
# shared piece moves down.
LAYERS = [
    {"errors"},
    {"support"},
    {"recipe"},
    {"checkpoints"},
    {"text"},
    {"measure"},
    {"quantization", "routing", "example"},
    {"provenance", "recipe_schema"},
    {"hub"},
    {"stages"},
    {"engine"},
    {"experiments"},
    {"cli"},
    {"__main__"},
]


def _room(module: str) -> str:
    return module.split(".")[1]


def test_no_import_runs_up_from_a_lower_room_of_the_package():
    rank = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
    package = ROOT / "frankenmoe"
    rooms = {p.stem if p.is_file() else p.name for p in package.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert rooms - {"__init__", "__pycache__", "templates"} == set(rank), "place the new room in LAYERS"
    upward = []
    for path in package.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        if len(rel.parts) < 2 or rel.parts[1] == "__init__":
            continue
        here = rel.parts[1]
        for module in _imports(path):
            if module.startswith("frankenmoe.") and _room(module) != here and rank[_room(module)] >= rank[here]:
                upward.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not upward, "\n".join(sorted(upward))


# Imports sit at the top of a module; only these libraries (top-level package names) are
# imported inside the function that needs them, so that start-up (`frankenmoe --help`, a
# fully cached build) never pays for them: they import torch or are slow to import.
# tqdm reads its TQDM_* settings when imported, after quiet_environment() set them.
# Anything else imported inside a function carries a `# lazy: <why>` comment.
HEAVY = {
    "torch",
    "transformers",
    "mergekit",
    "gptqmodel",
    "llama_cpp",
    "ray",
    "safetensors",
    "accelerate",
    "datasets",
    "lm_eval",
    "compressed_tensors",
    "awq",
    "huggingface_hub",
    "numpy",
    "matplotlib",
    "jinja2",
    "jsonschema",
    "tokenizers",
    "gguf",
    "optimum",
    "peft",
    "sentencepiece",
    "scipy",
    "pandas",
    "pyarrow",
    "httpx2",
    "tqdm",
}


def _imports_inside_functions(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a function or method body."""
    source = path.read_text()
    lines = source.splitlines()
    out = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                names = ["." if node.level else node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any("# lazy:" in line for line in lines[node.lineno - 1 : node.end_lineno]):
                continue
            out += [(node.lineno, name) for name in names]
    return out


def test_imports_sit_at_the_top_of_modules_but_heavy_libraries():
    inside = []
    for path in (ROOT / "frankenmoe").rglob("*.py"):
        for line, module in set(_imports_inside_functions(path)):
            if module.split(".")[0] not in HEAVY:
                inside.append(f"{path.relative_to(ROOT)}:{line} imports {module} inside a function")
    assert not inside, "move to the module's top (or mark `# lazy: why`):\n" + "\n".join(sorted(inside))


def test_importing_the_cli_imports_no_heavy_library():
    code = f"import sys, frankenmoe.cli; print(sorted(m for m in {sorted(HEAVY)} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"import frankenmoe.cli imports {out.stdout.strip()}"


class FillsTheDisk(Fake):
    def run(self, ctx):
        (ctx.out / "half.bin").write_bytes(b"x" * 100)
        # what safetensors raises: not an OSError, but the same condition
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")


def test_a_full_disk_reported_by_a_library_is_an_environment_problem(layout):
    with pytest.raises(EnvironmentProblem, match="fills: disk full while writing"):
        build(RECIPE, layout, [FillsTheDisk("fills")], log=quiet)
    assert not any(layout.stage_dir("fills").iterdir())


MAX_MODULE_LINES = 400


def test_no_module_is_over_400_lines():
    """A module holds one job: one that grows past this is split by job (docs/stages-and-cache.md)."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in [*(ROOT / "frankenmoe").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long
