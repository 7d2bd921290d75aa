"""``python -m clrp.scenes ...``, kept for one release: forwards to ``python -m clrp scenes export``."""
import sys

from ..cli import main

if __name__ == "__main__":
    print("clrp.scenes: deprecated entry point; use: python -m clrp scenes export ...", file=sys.stderr)
    sys.exit(main(["scenes", "export", *sys.argv[1:]]))
