"""The README's library example runs as printed."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["y"].shape == (3, 5, 32)  # the GRU's (B, T, 2H)
    assert namespace["dx"].shape == (3, 5, 8)
    assert list(namespace["rnn"].state_dict()) == ["weight_ih_l0", "weight_hh_l0"]
