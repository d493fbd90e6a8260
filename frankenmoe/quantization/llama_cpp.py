"""llama.cpp's own tools, never a re-implementation.

- The converter: `convert_hf_to_gguf.py` with its `conversion/` package and its
  own `gguf-py`, unpacked by `make setup` from the pinned llama-cpp-python sdist
  (which vendors llama.cpp) into the virtual environment (`install_converter`).
  It runs in its own process with that gguf-py first on the path, so the `gguf`
  package transformers uses is left alone.
- The quantizer: `llama_model_quantize` in libllama, through the bindings of the
  same llama-cpp-python (built from that sdist), in its own process so its log
  goes to a file.
- Logits: `llama_cpp.Llama` with every position's logits, on the ids as given
  (no BOS added), one window at a time with a fresh KV cache.
"""

from __future__ import annotations

import ast
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

from frankenmoe.checkpoints.tensor_file import Rows
from frankenmoe.errors import EnvironmentProblem, ToolFailed
from frankenmoe.support.atomic import atomic_folder
from frankenmoe.support.settings import cache_root

VERSION = "0.3.36"  # llama-cpp-python, pinned in pyproject.toml as well
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT = "0c1e57098"  # the llama.cpp the sdist vendors (its CHANGELOG.md)
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
# One portable build (x86-64 with AVX2) instead of -march=native: llama.cpp's logits,
# and so the published verify.json, then do not depend on the build machine's CPU.
BUILD_FLAGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF"
)
# GGUF file types the recipe may ask for, by llama.cpp's own names (llama_ftype).
FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q4_K_M": 15, "Q4_K_S": 14, "Q5_K_M": 17, "Q6_K": 18}


def converter_dir() -> Path:
    return Path(sys.prefix) / "share" / "frankenmoe" / f"llama.cpp-{VERSION}"


def setup_command() -> str:
    """The one command that installs llama.cpp's tools (the portable llama-cpp-python
    build and its converter) into the environment frankenmoe runs in: what `make
    setup` runs, and what `pip install -e .` or `pipx install` leave to the user."""
    return f"{sys.executable} -m frankenmoe.quantization.llama_cpp setup"


def require_converter() -> Path:
    d = converter_dir()
    if not (d / "convert_hf_to_gguf.py").is_file():
        raise EnvironmentProblem(
            f"gguf: llama.cpp's converter is not installed in this environment ({d} is missing); run "
            f"`{setup_command()}` once (it builds llama-cpp-python {VERSION} with portable flags and unpacks "
            "its converter), or set gguf.enabled: false in the recipe"
        )
    return d


def wheel_dir() -> Path:
    """Our own cache of the built wheel, keyed by version and build flags (pip's
    wheel cache ignores CMAKE_ARGS, so it could hand back a build with other flags)."""
    flags = hashlib.sha256(BUILD_FLAGS.encode()).hexdigest()[:12]
    return cache_root() / "wheels" / f"llama-cpp-python-{VERSION}-{flags}"


def setup(download_dir: Path) -> None:
    """`make setup`: build llama-cpp-python once with BUILD_FLAGS (about 6 minutes
    on 2 cores), install that wheel, and unpack the converter."""
    wheels = wheel_dir()
    if not list(wheels.glob("llama_cpp_python-*.whl")):
        env = {**os.environ, "CMAKE_ARGS": BUILD_FLAGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        print(f"building llama-cpp-python {VERSION} (llama.cpp {LLAMA_CPP_COMMIT}) once, into {wheels} ...")
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir", "--no-binary", ":all:"]
        with atomic_folder(wheels, f"llama.cpp: disk full while building into {wheels}; free space and rerun") as tmp:
            subprocess.run([*cmd, "--wheel-dir", str(tmp), f"llama-cpp-python=={VERSION}"], env=env, check=True)
    wheel = next(wheels.glob("llama_cpp_python-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", str(wheel)], check=True)
    install_converter(download_dir)


def install_converter(download_dir: Path) -> Path:
    """Fetch the pinned sdist from the package registry (pip's cache makes a rerun
    offline), check its sha256 and unpack the converter into the environment."""
    target = converter_dir()
    if (target / ".sha256").is_file() and (target / ".sha256").read_text().strip() == SDIST_SHA256:
        return target
    download_dir.mkdir(parents=True, exist_ok=True)
    sdist = download_dir / SDIST
    if not sdist.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, "--dest", str(download_dir), f"llama-cpp-python=={VERSION}"], check=True)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        sdist.unlink()
        raise EnvironmentProblem(f"{sdist}: sha256 {digest[:16]}..., expected {SDIST_SHA256[:16]}...; run setup again")
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    full = f"llama.cpp: disk full while unpacking the converter into {target}; free space and rerun"
    with atomic_folder(target, full) as tmp, tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix)
            and m.name[len(prefix) :].startswith(CONVERTER_PARTS)
            and (m.isfile() or m.isdir())
        ]
        for m in members:
            m.name = m.name[len(prefix) :]
        tar.extractall(tmp, members=members, filter="data")
        (tmp / ".sha256").write_text(SDIST_SHA256 + "\n")
    return target


def pretokenizer_table(converter: Path) -> tuple[str, dict[str, str]]:
    """The converter's own test text and its table {sha256 of the token ids: name}
    (read from its source, so it always matches the pinned version)."""
    tree = ast.parse((converter / "conversion" / "base.py").read_text(encoding="utf-8"))
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "get_vocab_base_pre")
    text, table = None, {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "chktxt":
            text = ast.literal_eval(node.value)
        if isinstance(node, ast.If) and getattr(getattr(node.test, "left", None), "id", None) == "chkhsh":
            res = None
            for st in node.body:
                if isinstance(st, ast.Assign) and getattr(st.targets[0], "id", None) == "res":
                    res = ast.literal_eval(st.value)
            table[ast.literal_eval(node.test.comparators[0])] = res
    if text is None:
        raise ToolFailed(f"gguf: no test text found in {converter}/conversion/base.py; the converter changed")
    return text, table


def converter_refusal(model_dir: Path, architecture: str) -> str | None:
    """Why llama.cpp's converter would refuse this model, or None. Reads the
    tokenizer and the converter's source, no weights: for preflight."""
    converter = require_converter()
    registered = "\n".join(p.read_text(encoding="utf-8") for p in sorted((converter / "conversion").glob("*.py")))
    if f'"{architecture}"' not in registered:
        return f"llama.cpp's converter ({VERSION}) has no architecture {architecture}"
    if (model_dir / "tokenizer.model").is_file():
        return None  # SentencePiece: the converter reads it directly, no pre-tokenizer to recognise
    # Loading the tokenizer costs seconds (transformers' import) on every build, cached
    # or not: a tokenizer once accepted by this converter is remembered by its files.
    accepted = cache_root() / f"gguf-accepted-tokenizers-{VERSION}" / _tokenizer_digest(model_dir)
    if accepted.is_file():
        return None
    why = _pretokenizer_refusal(model_dir, converter)
    if why is None:
        try:
            accepted.parent.mkdir(parents=True, exist_ok=True)
            accepted.touch()  # empty: never half-written
        except OSError:
            pass  # a memo only: without it the next build checks again
    return why


TOKENIZER_FILES = ("config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")


def _tokenizer_digest(model_dir: Path) -> str:
    """sha256 of every file the tokenizer is loaded from (names and bytes) and of the
    transformers version that loads it."""
    h = hashlib.sha256(f"transformers {version('transformers')}".encode())
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in TOKENIZER_FILES):
            h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _pretokenizer_refusal(model_dir: Path, converter: Path) -> str | None:
    from transformers import AutoTokenizer

    text, table = pretokenizer_table(converter)
    try:
        ids = AutoTokenizer.from_pretrained(model_dir).encode(text)
    except (OSError, ValueError) as e:
        return f"the model's tokenizer does not load ({type(e).__name__}), so llama.cpp's converter cannot read it"
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    if digest not in table:
        return (
            f"llama.cpp's converter ({VERSION}) does not recognise this tokenizer's pre-tokenizer "
            f"(hash {digest[:12]}...), so it cannot write a GGUF that tokenizes like the model"
        )
    return None


def convert(model_dir: Path, out_file: Path, log_file: Path, outtype: str, name: str) -> None:
    """The converter in its own process, with its own gguf-py first on the path. The
    name is given, so the file does not carry the (cache) folder's name."""
    converter = require_converter()
    env = {**os.environ, "PYTHONPATH": str(converter / "gguf-py")}
    cmd = [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(out_file)]
    cmd += ["--model-name", name]
    with open(log_file, "w") as log:
        proc = subprocess.run([*cmd, "--outtype", outtype], env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise ToolFailed(f"gguf: llama.cpp's converter failed (exit {proc.returncode}): {_last_line(log_file)}")


def quantize(src: Path, dst: Path, ftype: str, threads: int, log_file: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "frankenmoe.quantization.llama_cpp",
        "quantize",
        str(src),
        str(dst),
        ftype,
        str(threads),
    ]
    with open(log_file, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise ToolFailed(
            f"gguf: llama.cpp's quantizer failed for {ftype} (exit {proc.returncode}): {_last_line(log_file)}"
        )


def _quantize_here(src: str, dst: str, ftype: str, threads: int) -> int:
    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = threads
    return llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))


def parity(gguf: Path, reference: Path, merged: Path, threads: int, log_file: Path) -> dict:
    """llama.cpp's reading of `gguf` (its metadata) and its log-probs on the windows
    of `reference` (evaluate's folder) against the 16-bit ones there, computed in
    its own process: OpenMP threads that wait passively (a spinning wait was 8x
    slower with anything else on the machine) and no torch threads beside them."""
    out = log_file.with_suffix(".json")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(require_converter() / "gguf-py")}
    cmd = [sys.executable, "-m", "frankenmoe.quantization.llama_cpp", "parity", str(gguf), str(reference), str(merged)]
    cmd.append(str(out))
    with open(log_file, "w") as log:
        proc = subprocess.run([*cmd, str(threads)], env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise ToolFailed(
            f"gguf: llama.cpp could not evaluate {gguf.name} (exit {proc.returncode}): {_last_line(log_file)}"
        )
    result = json.loads(out.read_text())
    out.unlink()
    return result


EXPERT_TENSORS = {"ffn_gate_exps": "w1", "ffn_up_exps": "w3", "ffn_down_exps": "w2"}
# The share of the merge's difference between experts a file's slices must keep
# before their placement counts as measured.
MIN_KEPT = 0.5


def expert_identity(gguf: str, merged: Path) -> dict:
    """Is each expert slice of the GGUF the merge's expert of that index?

    Per expert tensor, the part all experts share is removed from the file's
    dequantized slices (x_e) and from the merge's 16-bit tensors (s_j), and each
    slice is regressed on each expert: c_ej = x_e.s_j / |s_j|^2. The slice is
    placed where c is largest; its margin over the runner-up, divided by the margin
    the merge's own tensors have, is the share of the experts' difference the file
    keeps (1 at no quantization loss, 0 where quantization made them alike). Only a
    share of at least MIN_KEPT is a measurement: pass at the right index, misplaced
    at another; under it the placement is not measured.

    Why not the plain nearest expert: quantization error is neither small next to
    experts this alike nor independent of their difference (measured on the real
    example at Q4_K_M, rounding pulls both slices to the same grid), so the nearest
    expert there is a coin toss. Swapping two slices flips the sign of their
    centred difference, so a swapped pair can never keep a positive share."""
    import numpy as np
    from gguf import GGUFReader  # the converter's own gguf-py (on PYTHONPATH here)
    from gguf.quants import dequantize
    from safetensors import safe_open

    handles = {}
    for f in sorted(merged.glob("*.safetensors")):
        h = safe_open(f, framework="np")
        handles.update({k: h for k in h.keys()})
    misplaced, checked, worst, unclear, kept_shares = [], 0, 0.0, [], []
    for tensor in GGUFReader(gguf).tensors:
        parts = tensor.name.split(".")
        if len(parts) != 4 or parts[2] not in EXPERT_TENSORS:
            continue
        layer, w = int(parts[1]), EXPERT_TENSORS[parts[2]]
        stacked = dequantize(tensor.data, tensor.tensor_type)
        names = [f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight" for e in range(stacked.shape[0])]
        sources = np.stack([handles[n].get_tensor(n).astype(np.float64).ravel() for n in names])
        slices = stacked.reshape(len(names), -1).astype(np.float64)
        for e in range(len(names)):
            worst = max(worst, float(np.linalg.norm(slices[e] - sources[e]) / np.linalg.norm(sources[e])))
        s = sources - sources.mean(axis=0)
        x = slices - slices.mean(axis=0)
        norms = np.sum(s**2, axis=1)
        identical = bool(np.any(norms == 0))
        for e in range(len(names)):
            checked += 1
            if identical:
                unclear.append(f"{tensor.name} expert {e} (the merge's experts are identical here)")
                kept_shares.append(0.0)
                continue
            c, ideal = (x[e] @ s.T) / norms, (s[e] @ s.T) / norms
            best = int(np.argmax(c))
            margin = c[best] - np.max(np.delete(c, best))
            kept = float(margin / (ideal[e] - np.max(np.delete(ideal, e))))
            kept_shares.append(kept)
            if kept < MIN_KEPT:
                unclear.append(f"{tensor.name} expert {e} (keeps {kept:.2f} of the experts' difference)")
            elif best != e:
                misplaced.append(
                    f"{tensor.name} expert {e} holds the merge's expert {best} "
                    f"(keeps {kept:.2f} of the experts' difference)"
                )
    return {
        "expert_tensors": checked,
        "misplaced": misplaced,
        "indistinguishable": len(unclear),
        "indistinguishable_slices": unclear[:10],
        "min_kept": min(kept_shares, default=0.0),
        "min_kept_needed": MIN_KEPT,
        "max_relative_error": worst,
    }


def _parity_here(gguf: str, reference: str, merged: str, out: str, threads: int) -> None:
    # The child's imports live here: `make setup` runs this module before pip has
    # installed anything but torch, so its top level imports only the standard library.
    import numpy as np
    import torch
    from llama_cpp import Llama
    from safetensors import safe_open

    from frankenmoe.measure.documents import HeldOutWindows  # lazy: pydantic, absent when setup runs
    from frankenmoe.measure.evaluation import logprob_parity  # lazy: imports measure.documents

    ref = HeldOutWindows.read(Path(reference) / "reference.json")
    stored = safe_open(Path(reference) / "reference.safetensors", framework="pt")  # open for this process's life
    windows = list(zip(ref.domains, stored.get_tensor("tokens").tolist()))
    n = ref.seq_len
    llm = Llama(
        model_path=gguf,
        n_ctx=n,
        n_batch=n,
        n_ubatch=n,
        logits_all=True,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )

    def logprobs():
        for _, ids in windows:
            llm.reset()  # a fresh KV cache per window; eval adds no BOS
            llm.eval([int(i) for i in ids[:-1]])
            logits = torch.from_numpy(np.array(llm.scores[: len(ids) - 1], dtype=np.float32))
            yield torch.log_softmax(logits, dim=-1)

    meta = dict(llm.metadata)
    arch = meta.get("general.architecture", "?")
    facts = {
        "architecture": arch,
        "expert_count": int(meta.get(f"{arch}.expert_count", -1)),
        "expert_used_count": int(meta.get(f"{arch}.expert_used_count", -1)),
        "file_type": int(meta.get("general.file_type", -1)),
    }
    result = {
        "metadata": facts,
        "experts": expert_identity(gguf, Path(merged)),
        # the reference log-probs are read window by window, never whole
        "parity": logprob_parity(logprobs(), windows, Rows(stored, "logprobs")),
    }
    Path(out).write_text(json.dumps(result))


def _last_line(log_file: Path) -> str:
    lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


if __name__ == "__main__":
    if sys.argv[1] == "quantize":
        sys.exit(_quantize_here(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
    if sys.argv[1] == "parity":
        _parity_here(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
    if sys.argv[1] == "setup":  # setup [DOWNLOAD_DIR]: the sdist goes there (default: the cache's downloads/)
        setup(Path(sys.argv[2]) if len(sys.argv) > 2 else cache_root() / "downloads")
