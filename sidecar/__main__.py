"""`python -m sidecar` runs the command line."""

from sidecar.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
