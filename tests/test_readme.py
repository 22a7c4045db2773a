"""The README's result tables are the files the experiments and benchmarks write, never typed by hand."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_blocks_match_their_generated_files():
    script = load_script()
    text = (ROOT / "README.md").read_text()
    assert script.BLOCK.search(text), "the README has no generated blocks"
    assert script.render(text) == text, "README is out of date: run python scripts/update_readme.py"


def test_readme_starts_with_install_run_and_test_commands():
    text = (ROOT / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```bash\n")[1:3]]
    install, run = blocks[0].strip().splitlines()[:2]
    assert install == 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"'
    assert run.startswith("fedlrs simulate") and "--epsilon" in run
    assert blocks[1].strip() == "python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci and "\npython -m pytest\n" in ci
