"""``python -m turngym``: the `turngym` command line (`turngym.cli`), also under torchrun.

    torchrun --nproc_per_node 2 -m turngym train [PRESET] [key=value ...]

Under torchrun (``WORLD_SIZE`` > 1) the process leaves through `turngym.trainers.distributed.exit_process`, after
the trainer has closed its files and left the process group: interpreter finalization would race the gloo threads
that outlive the process group.
"""

from __future__ import annotations

import os
import sys

from turngym.cli import main

if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        from turngym.trainers.distributed import exit_process

        exit_process(code)
    sys.exit(code)
