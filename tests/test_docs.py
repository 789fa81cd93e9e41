"""docs/environment.md documents every setting of the environment, and README stays a page a newcomer reads."""

import dataclasses
import re
from pathlib import Path

from seal_env.config import SealConfig

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_the_settings_table():
    page = (ROOT / "docs" / "environment.md").read_text()
    missing = [f.name for f in dataclasses.fields(SealConfig) if f"| `{f.name}` |" not in page]
    assert not missing, f"docs/environment.md's settings table lacks {missing}"


def test_readme_fits_on_a_few_screens_and_every_local_link_resolves():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
