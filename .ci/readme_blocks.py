"""Print the shell block of README.md that follows the marker ``<!-- ci: NAME -->``.

CI (``.ci/run``) runs the README's commands exactly as printed, so the README cannot drift from
what is tested:

    python3 .ci/readme_blocks.py tests        # the test command
    python3 .ci/readme_blocks.py --list       # every marked block
"""
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARKED = re.compile(r"<!-- ci: ([\w-]+) -->\s*\n```(?:bash|sh)?\n(.*?)```", re.S)


def blocks() -> dict:
    found = {}
    for name, body in MARKED.findall(README.read_text()):
        if name in found:
            raise SystemExit(f"README.md marks two blocks as '{name}'")
        found[name] = body
    return found


def main(argv) -> int:
    marked = blocks()
    if argv == ["--list"]:
        print("\n".join(marked))
        return 0
    if len(argv) != 1 or argv[0] not in marked:
        print(f"usage: readme_blocks.py NAME|--list; README.md marks: {', '.join(marked) or 'nothing'}", file=sys.stderr)
        return 2
    sys.stdout.write(marked[argv[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
