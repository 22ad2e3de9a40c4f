"""`python -m maskgit_inpaint [CMD ARGS...]`: print the environment defaults in effect, or run CMD under them."""
from __future__ import annotations

import os
import sys

from maskgit_inpaint import environment  # importing the package has applied them

if len(sys.argv) > 1:
    os.execvp(sys.argv[1], sys.argv[1:])
for name in environment.defaults():
    print(f"{name}={os.environ[name]}")
