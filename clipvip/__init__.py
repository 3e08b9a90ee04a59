"""clipvip: CLIP-ViP (Xue et al., ICLR 2023) as an HPC workflow.

Stages are subcommands of the ``clipvip`` console script (see ``clipvip.cli``); each is a ``main(argv)``
function in its own module so tests can call it directly.
"""

__version__ = "0.1.0"
