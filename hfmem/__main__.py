"""``python -m hfmem`` runs the CLI."""

from hfmem.cli import main

if __name__ == "__main__":
    main()
