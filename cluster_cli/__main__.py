"""``python -m cluster_cli TASK ...``: same as the ``cluster`` console script."""

from .main import main

main()
