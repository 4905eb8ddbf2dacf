"""The README's set-up commands and Python examples stay true."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _text():
    return README.read_text()


def test_readme_starts_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", _text(), re.S).group(1)
    lines = [ln for ln in first_block.splitlines() if ln.strip()]
    assert lines == [
        "pip install . && tgjax train",
        'pip install ".[test]" && python -m pytest -q tests',
    ]


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", _text(), re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert len(namespace["groups"]) == 3
    assert namespace["result"].test["total_loss"] > 0
