"""``python -m convertsnn`` (and ``torchrun -m convertsnn``) runs the command line."""

from convertsnn.cli import main

if __name__ == "__main__":
    main()
