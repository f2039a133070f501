"""``python -m allocator``: the CLI, with the current folder moved behind installed packages.

``-m`` puts the current folder first on ``sys.path``; run from a checkout, its top-level
``kernels/`` folder (installed as ``allocator.kernels``) would then shadow the Hugging Face
``kernels`` package that transformers imports when it loads a model.
"""

import os
import sys

if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.getcwd():
    sys.path.append(sys.path.pop(0))

from allocator.cli.main import main

sys.exit(main())
