"""Small dataset repos of a Hub benchmark's shape, uploaded to the Hub stand-in with the real client.

Why: a recipe naming an lm-eval task whose data lives on the Hub (`dataset_path: Rowan/hellaswag`) must be
tested along the path a user with the Hub takes: `datasets` reaching HF_ENDPOINT over HTTP. The rows are
written here (a few items of the same fields, not the benchmark's text); the repo holds parquet files under
`data/`, which `datasets` reads into splits by their names, as it does the real repo's.
"""

from __future__ import annotations

from pathlib import Path

# HellaSwag's fields (lm-eval's hellaswag task reads activity_label, ctx_a, ctx_b, endings, label).
HELLASWAG_ROWS = [
    (
        "Baking bread",
        "A man kneads dough on a floured table.",
        "he",
        [
            "folds it over and presses it down again.",
            "throws the dough into the river.",
            "paints the table a bright blue colour.",
            "reads a newspaper while riding a horse.",
        ],
        0,
    ),
    (
        "Washing a car",
        "A woman sprays water over a red car.",
        "she",
        [
            "plants a tree on the roof of the house.",
            "scrubs the doors with a soapy sponge.",
            "sings to a crowd in a large stadium.",
            "cuts the car in half with scissors.",
        ],
        1,
    ),
    (
        "Playing guitar",
        "A boy sits on a chair holding a guitar.",
        "he",
        [
            "eats the guitar strings one by one.",
            "jumps into a swimming pool of sand.",
            "strums the strings and starts to sing.",
            "drives a bus through the kitchen.",
        ],
        2,
    ),
    (
        "Running a marathon",
        "Runners line up at the start of a long race.",
        "they",
        [
            "sit down and knit scarves together.",
            "fly away on the backs of large birds.",
            "turn into statues made of glass.",
            "set off when the starting gun fires.",
        ],
        3,
    ),
    (
        "Making tea",
        "A kettle boils on the stove in a small kitchen.",
        "the woman",
        [
            "pours the hot water over a tea bag in a cup.",
            "puts the kettle in the washing machine.",
            "climbs a mountain carrying the stove.",
            "writes a letter to the kettle.",
        ],
        0,
    ),
    (
        "Painting a wall",
        "A man dips a roller into a tray of white paint.",
        "he",
        [
            "feeds the roller to a hungry dog.",
            "rolls the paint evenly up the wall.",
            "buries the tray in the garden.",
            "swims across the tray of paint.",
        ],
        1,
    ),
]


def hellaswag_split(rows: list[tuple], split: str) -> list[dict]:
    return [
        {
            "ind": i,
            "activity_label": label,
            "ctx_a": ctx_a,
            "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b}",
            "endings": endings,
            "source_id": f"standin~{split}~{i}",
            "split": split,
            "split_type": "indomain",
            "label": str(gold),
        }
        for i, (label, ctx_a, ctx_b, endings, gold) in enumerate(rows)
    ]


def upload_hellaswag(hub, token: str, work: Path, repo_id: str = "Rowan/hellaswag") -> str:
    """A HellaSwag-shaped dataset repo on the stand-in (train: 2 rows, validation: 4), by HfApi; its id."""
    from datasets import Dataset
    from huggingface_hub import HfApi

    folder = work / "hellaswag-repo"
    (folder / "data").mkdir(parents=True)
    splits = {"train": HELLASWAG_ROWS[:2], "validation": HELLASWAG_ROWS[2:]}
    for split, rows in splits.items():
        Dataset.from_list(hellaswag_split(rows, split)).to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    api = HfApi(endpoint=hub.url, token=token)
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=folder)
    return repo_id
