"""``python -m gensid.config [docs/config.md]``: write the config reference (stdout without a path)."""

import sys
from pathlib import Path

from gensid.config.reference import reference_markdown

text = reference_markdown()
if len(sys.argv) > 1:
    Path(sys.argv[1]).write_text(text)
else:
    sys.stdout.write(text)
