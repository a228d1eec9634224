"""``python -m forcegp``: the same as the ``forcegp`` command."""

from .cli import main

if __name__ == "__main__":
    main()
