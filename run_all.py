#!/usr/bin/env python
"""itrbench command line (also installed as the `itrbench` console script). See README.md."""

from harness.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
