"""python -m cumem: the same as the `cumem` command."""

from ._cli import main

main()
