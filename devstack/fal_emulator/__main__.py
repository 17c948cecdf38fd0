"""`python -m devstack.fal_emulator`: see devstack/fal_emulator/cli.py for the flags."""

from devstack.fal_emulator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
