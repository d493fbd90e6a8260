"""Every "how to run it" snippet of the example's cards, run as a user would after
the push (the folders uploaded to the local Hub stand-in, the snippets run verbatim
against it over HTTP), and the readers the AWQ card warns about pinned: when a
release fixes one, its test fails and the card's warning goes
(frankenmoe/quantization/readers.py)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from frankenmoe.quantization import readers
from tests.conftest import HUB_TOKEN, REAL_RECIPE, REPO, example_data, run_cli, write_recipe

PROMPT_WORDS = 4  # continuations compared word by word, up to quantization


def code_blocks(card: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", card.read_text(encoding="utf-8"), flags=re.S)


def run_snippet(argv: list[str], cwd: Path, env: dict, timeout: int = 900) -> str:
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def continuation(text: str, prompt: str) -> list[str]:
    assert prompt in text, text
    return text.split(prompt, 1)[1].split()[:PROMPT_WORDS]


def generate_16_bit(merged: Path, prompt: str) -> list[str]:
    out = run_snippet(["frankenmoe", "generate", str(merged), "--prompt", prompt], REPO, {})
    return continuation(out, prompt)


TOP_K, MIN_SHARE = 5, 0.9  # "up to quantization": the 4-bit text is one the 16-bit model would write


def share_in_16_bit_top_k(merged: Path, prompt: str, text: str) -> float:
    """Share of the tokens of `text` (a continuation of `prompt`) that the 16-bit
    model ranks among its TOP_K next tokens, teacher-forced on that text. A 4-bit
    greedy run may take another of the likely tokens and go its own way; text the
    16-bit model would not write (a reader that scrambles the experts) scores low.
    Text is tokenized again, which can split it otherwise than it was generated; where
    the generated ids are known, share_of_ids_in_16_bit_top_k measures those."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    start = len(tokenizer(prompt)["input_ids"])
    return share_of_ids_in_16_bit_top_k(merged, tokenizer(prompt + text)["input_ids"], start)


def share_of_ids_in_16_bit_top_k(merged: Path, ids: list[int], start: int) -> float:
    """Share of ids[start:] that the 16-bit model ranks among its TOP_K next tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, start - 1 : -1]
    top = logits.topk(TOP_K, dim=-1).indices
    return float((top == torch.tensor(ids[start:])[:, None]).any(-1).float().mean())


# Run before a transformers snippet: each decode() also writes the ids it was given
# to the file named by argv[1], so a test scores the tokens the snippet generated
# (decoding and tokenizing again can split the text otherwise: measured on the toy,
# '"" "" """,' came back as other tokens and scored 0.56 where the ids score 1.0).
RECORD_DECODED_IDS = """
import json as _json, sys as _sys, transformers as _transformers
_load = _transformers.AutoTokenizer.from_pretrained
def _recording(*args, **kwargs):
    tokenizer = _load(*args, **kwargs)
    decode = tokenizer.decode
    def _decode(ids, *a, **k):
        with open(_sys.argv[1], "w") as f:
            _json.dump([int(i) for i in ids], f)
        return decode(ids, *a, **k)
    tokenizer.decode = _decode
    return tokenizer
_transformers.AutoTokenizer.from_pretrained = _recording
"""


def run_transformers_snippet(snippet: str, cwd: Path, env: dict) -> tuple[str, list[int]]:
    """The snippet run verbatim in its own Python, and the ids it last decoded."""
    ids_file = cwd / "decoded-ids.json"
    ids_file.unlink(missing_ok=True)
    text = run_snippet([sys.executable, "-c", RECORD_DECODED_IDS + snippet, str(ids_file)], cwd, env)
    return text, json.loads(ids_file.read_text())


def prompt_length(folder: Path, prompt: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(folder)(prompt)["input_ids"])


@pytest.mark.slow
def test_each_cards_snippets_run_from_the_hub_and_continue_like_the_16_bit_model(real, hub, tmp_path):
    from huggingface_hub import snapshot_download

    # The example's cards with Hub repo ids, pushed by the build (only lock, card,
    # manifest and push rerun), public, so the snippets need no token.
    data = example_data(REAL_RECIPE)
    repos = {
        "merged": "me/smollm2-2x",
        "awq": "me/smollm2-2x-AWQ",
        "gguf": "me/smollm2-2x-GGUF",
        "w4a16": "me/smollm2-2x-W4A16",
    }
    data["publish"] = {"push": True, "private": False, **{f: {"repo_id": r} for f, r in repos.items()}}
    recipe = write_recipe(tmp_path / "smollm2-2x.yaml", data)
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = run_cli(
        "build", str(recipe), build=real["root"] / "build", dist=tmp_path / "dist", env={**env, "HF_TOKEN": HUB_TOKEN}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dist = tmp_path / "dist" / "smollm2-2x"
    cards = {folder: dist / folder / "README.md" for folder in repos}
    assert all(repo in cards[folder].read_text() for folder, repo in repos.items())

    (snippet,) = code_blocks(cards["merged"], "python")
    prompt = re.search(r'tokenizer\("([^"]+)"', snippet).group(1)
    reference = generate_16_bit(dist / "merged", prompt)
    assert continuation(run_snippet([sys.executable, "-c", snippet], tmp_path, env), prompt) == reference

    (generate,) = [b for b in code_blocks(cards["awq"], "sh") if b.startswith("frankenmoe generate")]
    path = re.search(r"frankenmoe generate (\S+)", generate).group(1)
    snapshot_download(repos["awq"], endpoint=hub.url, local_dir=tmp_path / path)
    prompt = re.search(r'--prompt "([^"]+)"', generate).group(1)
    text = run_snippet(["bash", "-c", generate], tmp_path, env)
    assert prompt in text, text
    assert share_in_16_bit_top_k(dist / "merged", prompt, text.split(prompt, 1)[1]) >= MIN_SHARE, text

    # The compressed-tensors folder, read by transformers itself: the card's snippet verbatim.
    (snippet,) = code_blocks(cards["w4a16"], "python")
    prompt = re.search(r'tokenizer\("([^"]+)"', snippet).group(1)
    text, ids = run_transformers_snippet(snippet, tmp_path, env)
    assert prompt in text, text
    start = prompt_length(dist / "merged", prompt)
    assert share_of_ids_in_16_bit_top_k(dist / "merged", ids, start) >= MIN_SHARE, text

    (snippet,) = code_blocks(cards["gguf"], "python")
    prompt = re.search(r'llm\("([^"]+)"', snippet).group(1)
    text = run_snippet([sys.executable, "-c", snippet], tmp_path, env).removesuffix("\n")
    assert share_in_16_bit_top_k(dist / "merged", prompt, text) >= MIN_SHARE, text


def _installed(reader: readers.FailingReader) -> None:
    """The warning holds for the version it was measured on: another version is re-measured."""
    got = importlib.metadata.version(reader.package)
    assert got == reader.version, (
        f"{reader.package} is {got}, the card's warning was measured on {reader.version}: run this test's "
        f"reader on the example again and update frankenmoe/quantization/readers.py"
    )


def _facts_of(script: str, folder: Path) -> tuple[dict, str]:
    """Run a reader in its own process (importing GPTQModel patches transformers'
    Mixtral for the rest of a process): the JSON line it prints last, and its log."""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=900, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout + proc.stderr


FROM_PRETRAINED = """
import json, sys, transformers
transformers.logging.set_verbosity_error()
_, info = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], output_loading_info=True)
print(json.dumps({k: sorted(v) for k, v in info.items() if k != "error_msgs"}))
"""

GPTQMODEL_LOAD = """
import json, sys, torch
from gptqmodel import GPTQModel
from frankenmoe.checkpoints.loading import load_model
ids = torch.tensor([[1, 5, 9, 17, 33]])
with torch.no_grad():
    ours = load_model(sys.argv[1], dtype="float32")(ids).logits.float()
    theirs = GPTQModel.load(sys.argv[1], device="cpu").model(ids).logits.float()
print(json.dumps({"nan": bool(theirs.isnan().any()), "max_diff": float((theirs - ours).abs().nan_to_num(1e9).max())}))
"""
NOT_USED = re.compile(r"were not used when initializing \w+: \{(.*?)\}", re.S)


def test_transformers_from_pretrained_still_misreads_the_awq_folder(example):
    """Pins what the AWQ card says: from_pretrained renames block_sparse_moe to mlp,
    finds no place for the per-expert 4-bit tensors and leaves the fused experts unset."""
    _installed(next(r for r in readers.FAILING if r.package == "transformers"))
    info, _ = _facts_of(FROM_PRETRAINED, example["awq"])
    unexpected = [k for k in info["unexpected_keys"] if ".mlp.experts." in k and k.endswith(".qweight")]
    missing = [k for k in info["missing_keys"] if k.endswith((".mlp.experts.gate_up_proj", ".mlp.experts.down_proj"))]
    assert unexpected and missing, info


def test_gptqmodel_load_still_leaves_the_expert_tensors_unused(example):
    """Pins what the AWQ card says: GPTQModel's quantized loader leaves the routers and
    the experts' 4-bit tensors unused, and the model it returns computes NaN logits."""
    _installed(next(r for r in readers.FAILING if r.package == "gptqmodel"))
    facts, log = _facts_of(GPTQMODEL_LOAD, example["awq"])
    assert facts["nan"], f"GPTQModel's logits are no longer NaN ({facts}): re-measure and update readers.py"
    unused = NOT_USED.search(log)
    assert unused and ".block_sparse_moe.gate.weight" in unused.group(1), log[-2000:]
    assert ".block_sparse_moe.experts.0.w1.qweight" in unused.group(1)
