"""`python -m fabric.cli`: the same as the `fabric` console script."""

from fabric.cli import main

main()
