"""Each variant's routing page beside a sweep's or study's report, so a reader compares
how hidden, random and fitted routers (or any axis) send the same held-out tokens."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from frankenmoe.experiments.variants import Outcome, Variant
from frankenmoe.stages.gates import routed_model
from frankenmoe.stages.verify import report_dir, write_reference_page


def write_routing_pages(variants: list[Variant], outcomes: dict[str, Outcome], out: Path) -> dict[str, str]:
    """`out/routing/<variant>.html` for every variant that reached `evaluate`: verify's
    page (16-bit beside 4-bit) where it ran, else the 16-bit model's. Returns each
    page's path relative to `out`, by variant name, for the report to link."""
    pages = {}
    for v in variants:
        outcome = outcomes.get(v.name)
        if outcome is None or "evaluate" not in outcome.results:
            continue
        rel = f"routing/{v.name}.html"
        tmp = out / "routing" / f".{v.name}.html.tmp"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        results = outcome.results
        if "verify" in results:
            shutil.copyfile(report_dir(results["verify"]) / "routing.html", tmp)
        else:
            title = f"{v.recipe.name} ({v.label})"
            write_reference_page(tmp, title, v.recipe.verify, results["evaluate"], routed_model(results["gates"]))
        os.replace(tmp, out / rel)
        pages[v.name] = rel
    return pages
