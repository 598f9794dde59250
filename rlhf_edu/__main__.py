"""``python -m rlhf_edu ...``: the ``rlhf-edu`` command, for launchers such as ``torchrun -m``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
