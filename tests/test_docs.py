"""README documents every setting of the environment."""

import dataclasses
from pathlib import Path

from seal_env.config import SealConfig

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table():
    missing = [f.name for f in dataclasses.fields(SealConfig) if f"| `{f.name}` |" not in README]
    assert not missing, f"README settings table lacks {missing}"
