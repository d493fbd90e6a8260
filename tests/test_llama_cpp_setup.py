"""Without llama.cpp's tools (`pip install -e .` or `pipx install` alone), the gguf
preflight stops the build with one line naming the one command that installs them,
the same command `make setup` runs."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.conftest import REPO, example_data


def _environment_without_the_converter(tmp_path):
    """A virtual environment that sees every package installed here (their .pth
    files included, so the editable install's finder too) but whose prefix has no
    llama.cpp converter: what `pip install -e .` leaves."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    dirs = [p for p in sys.path if p.endswith("site-packages")]
    (site / "installed.pth").write_text("".join(f"import site; site.addsitedir({d!r})\n" for d in dirs))
    return venv / "bin" / "python"


def test_the_gguf_preflight_names_the_command_that_installs_llama_cpp(tmp_path):
    python = _environment_without_the_converter(tmp_path)
    recipe = {**example_data(), "name": "needs-gguf", "gguf": {"enabled": True}}
    path = tmp_path / "needs-gguf.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    proc = subprocess.run(
        [str(python), "-m", "frankenmoe.cli", "plan", str(path)], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: gguf:")]
    assert len(lines) == 1, proc.stderr
    command = f"{python} -m frankenmoe.quantization.llama_cpp setup"
    assert f"`{command}`" in lines[0] and "gguf.enabled: false" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_make_setup_runs_that_command():
    setup = (REPO / "Makefile").read_text().split("\n$(BIN)/frankenmoe:", 1)[1].split("\n\n", 1)[0]
    assert "$(BIN)/python -m frankenmoe.quantization.llama_cpp setup\n" in setup


# A finder that refuses every module outside the standard library and frankenmoe: the
# environment `make setup` runs the setup command in, before pip installs the package's
# dependencies (pydantic, numpy, ... are absent there).
_ONLY_THE_STANDARD_LIBRARY = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in sys.stdlib_module_names and top != "frankenmoe":
            raise ModuleNotFoundError(f"No module named {name!r} (only the standard library here)")
sys.meta_path.insert(0, Refuse())
import frankenmoe.quantization.llama_cpp as m
print(m.setup.__name__)
"""


def test_the_setup_command_imports_only_the_standard_library():
    proc = subprocess.run([sys.executable, "-c", _ONLY_THE_STANDARD_LIBRARY], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "setup", proc.stderr
