"""Write the README's stage table from the pipeline table and the loss registries (the test suite checks it is current)."""

import sys
from pathlib import Path

from alignlab.pipeline import README_BEGIN, README_END, stage_table_markdown

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text(encoding="utf-8")
head, rest = text.split(README_BEGIN, 1)
_, tail = rest.split(README_END, 1)
new = f"{head}{README_BEGIN}\n{stage_table_markdown()}\n{README_END}{tail}"
if new != text:
    readme.write_text(new, encoding="utf-8")
    print("README.md: stage table updated", file=sys.stderr)
