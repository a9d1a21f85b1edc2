"""The documentation's commands, code and links (README.md, BENCHMARKS.md, docs/*.md,
examples/*/README.md).

* every shell block (```bash / sh / shell) and every `$ command` line of a transcript passes
  `bash -n`;
* every `mlip-md ...` command in them parses with the real parser (`mlip_md.cli.build_parser`);
* every Python block compiles;
* the files that shell and Python blocks name under examples/, benchmarks/ and csrc/ exist;
* every link to a file of the repository resolves, and so does its #anchor (GitHub's heading ids);
* the README links every page of docs/ (a newcomer finds each engine and workflow from it);
* blocks marked ``<!-- docs: run -->`` run in a temporary directory (keep them few and fast), and a
  block marked ``<!-- docs: output -->`` right after one is exactly what it printed.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md"),
                *(ROOT / "examples").glob("*/README.md")])
SHELL = {"bash", "sh", "shell"}
PYTHON = {"python", "py"}
MARKER = re.compile(r"<!--\s*(docs|ci):\s*([\w-]+)\s*-->")
DOCS_MARKERS = {"run", "output"}
FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)\s*$")
#: operators that end a simple shell command; redirections take the next word as their target
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
REDIRECTIONS = {">", ">>", "<", ">&", "&>", "<<", "<<<", "2>", "&>>"}
#: a redirection with its target (``> log``, ``2>&1``, ``>/dev/null``), removed before splitting
REDIRECTION = re.compile(r"(?<!\S)\d*(?:>>?|<|&>)(?:&\d+|\s*[^\s;&|()]+)")
#: repository directories whose files the docs' commands may name (the Python and C++ trees are
#: named through public APIs and checked by their own tests)
CHECKED_DIRS = ("examples", "benchmarks", "csrc")
PATH_IN_CODE = re.compile(r"(?<![\w./$-])((?:%s)/[\w./-]*\w)" % "|".join(CHECKED_DIRS))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None  # "docs:run", "ci:tests", ...

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with the marker comment right above each."""
    blocks, lines = [], page.read_text().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end]]
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.fullmatch(previous.strip())
        blocks.append(Block(page, i + 1, lang.lower(), "\n".join(body) + "\n",
                            f"{marker.group(1)}:{marker.group(2)}" if marker else None))
        i = end + 1
    return blocks


def prose(page: Path) -> str:
    """The page without its fenced blocks and inline code spans (where links live)."""
    return re.sub(r"`[^`]+`", "", without_fences(page))


def heading_ids(page: Path) -> set[str]:
    """GitHub's ids of the page's headings (lower case, punctuation dropped, spaces -> '-',
    '-1', '-2' ... for repeats)."""
    ids, seen = set(), {}
    for line in without_fences(page).split("\n"):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # links -> their text
        text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


def without_fences(page: Path) -> str:
    """The page without its fenced blocks (a `# comment` in a code block is no heading)."""
    out, in_fence = [], None
    for line in page.read_text().split("\n"):
        m = FENCE.match(line)
        if m and (in_fence is None or line.strip().startswith(in_fence)):
            in_fence = None if in_fence else m.group(2)
            out.append("")
            continue
        out.append("" if in_fence else line)
    return "\n".join(out)


def shell_sources(block: Block) -> list[str]:
    """The shell text of a block: all of a shell block, the `$ ` lines of a transcript."""
    if block.lang in SHELL:
        return [block.text]
    if block.lang in PYTHON:
        return []
    return [line[2:] for line in block.text.split("\n") if line.startswith("$ ")]


def substitutions(line: str) -> tuple[str, list[str]]:
    """``line`` with each ``$(...)`` replaced by a word, and the commands inside them."""
    inner, out, i = [], [], 0
    while i < len(line):
        if line.startswith("$(", i):
            depth, j = 1, i + 2
            while j < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[j], 0)
                j += 1
            inner.append(line[i + 2:j - 1])
            out.append("SUBSTITUTED")
            i = j
        else:
            out.append(line[i])
            i += 1
    return "".join(out), inner


def simple_commands(source: str) -> list[list[str]]:
    """The simple commands (word lists) of a shell text: continuation lines joined, comments,
    operators, redirections and ``$(...)`` handled (the inner commands are returned too)."""
    commands, pending = [], [line for line in source.replace("\\\n", " ").split("\n")]
    while pending:
        line, inner = substitutions(pending.pop(0))
        pending.extend(inner)
        line = REDIRECTION.sub(" ", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words, skip_next = [], False
        for token in lexer:
            if skip_next:
                skip_next = False
            elif token in SEPARATORS:
                commands.append(words)
                words = []
            elif token in REDIRECTIONS or re.fullmatch(r"\d?[<>]+&?", token):
                skip_next = True
            else:
                words.append(token)
        commands.append(words)
    return [c for c in commands if c]


def mlip_md_arguments(command: list[str]) -> list[str] | None:
    """The arguments after `mlip-md` in a simple command (after `mpiexec -n P`, `do`, ...)."""
    for k, word in enumerate(command):
        if word == "mlip-md" or word.endswith("/mlip-md"):
            return command[k + 1:]
    return None


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.fixture(scope="module")
def parser():
    from mlip_md.cli import build_parser

    return build_parser()


def test_pages_are_found():
    names = {page_id(p) for p in PAGES}
    assert {"README.md", "BENCHMARKS.md", "docs/model-contract.md", "examples/lammps/README.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_shell_blocks_parse(page):
    errors = []
    for block in read_blocks(page):
        for source in shell_sources(block):
            proc = subprocess.run(["bash", "-n"], input=source, capture_output=True, text=True)
            if proc.returncode != 0:
                errors.append(f"{block.where}: bash -n: {proc.stderr.strip()}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_mlip_md_commands_parse(page, parser):
    errors, checked = [], 0
    for block in read_blocks(page):
        for source in shell_sources(block):
            for command in simple_commands(source):
                arguments = mlip_md_arguments(command)
                if arguments is None:
                    continue
                checked += 1
                stderr = io.StringIO()
                try:
                    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                        parser.parse_args(arguments)
                except SystemExit as exc:
                    if exc.code:
                        errors.append(f"{block.where}: mlip-md {' '.join(arguments)}: {stderr.getvalue().strip()}")
    assert not errors, "\n".join(errors)


def test_the_command_parser_sees_every_kind_of_line(parser):
    """The extraction finds mlip-md behind variables, substitutions, mpiexec and loops, and a
    wrong option fails."""
    source = ('PLUGIN=$(mlip-md lammps-plugin-path)  # comment\n'
              'mpiexec -n 2 mlip-md ipi --address cu --unix & sleep 1; kill $!\n'
              'for k in 1 2; do mlip-md ipi --address x --unix & done; wait\n'
              'mlip-md train a.extxyz -o m.pt \\\n    --ensemble 4 > log.txt 2>&1\n')
    found = [mlip_md_arguments(c) for c in simple_commands(source)]
    found = [a for a in found if a is not None]
    assert ["lammps-plugin-path"] in found
    assert ["ipi", "--address", "cu", "--unix"] in found and ["ipi", "--address", "x", "--unix"] in found
    assert ["train", "a.extxyz", "-o", "m.pt", "--ensemble", "4"] in found
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parser.parse_args(["ipi", "--no-such-option"])


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_python_blocks_compile(page):
    errors = []
    for block in read_blocks(page):
        if block.lang in PYTHON:
            try:
                compile(block.text, block.where, "exec")
            except SyntaxError as exc:
                errors.append(f"{block.where}: {exc}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_files_named_by_commands_exist(page):
    errors = []
    for block in read_blocks(page):
        if block.lang in SHELL | PYTHON:
            for path in PATH_IN_CODE.findall(block.text):
                if not (ROOT / path).exists():
                    errors.append(f"{block.where}: {path} does not exist")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_resolve(page):
    errors = []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            errors.append(f"{page_id(page)}: link {target}: {path} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_ids(resolved):
            errors.append(f"{page_id(page)}: link {target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert not errors, "\n".join(errors)


def test_heading_ids_follow_github():
    page = ROOT / "BENCHMARKS.md"
    ids = heading_ids(page)
    assert "neighbour-list" in ids and "torch-threads-per-process" in ids
    assert "libtorchs-blas-in-lmp" in ids  # apostrophe and code span dropped


def test_readme_links_every_docs_page():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(prose(ROOT / "README.md"))}
    missing = [page_id(p) for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_markers_are_known_and_mark_blocks():
    errors = []
    for page in PAGES:
        marked = {b.line for b in read_blocks(page) if b.marker}
        lines = page.read_text().split("\n")
        for n, line in enumerate(lines, 1):
            m = MARKER.search(line)
            if not m:
                continue
            if m.group(1) == "docs" and m.group(2) not in DOCS_MARKERS:
                errors.append(f"{page_id(page)}:{n}: unknown marker docs: {m.group(2)} (known: {sorted(DOCS_MARKERS)})")
            following = next((k for k in range(n, len(lines)) if lines[k].strip()), None)
            if following is None or following + 1 not in marked:
                errors.append(f"{page_id(page)}:{n}: marker not directly above a fenced block")
    assert not errors, "\n".join(errors)


def runnable_blocks() -> list[tuple[Block, Block | None]]:
    found = []
    for page in PAGES:
        blocks = read_blocks(page)
        for k, block in enumerate(blocks):
            if block.marker == "docs:run":
                after = blocks[k + 1] if k + 1 < len(blocks) and blocks[k + 1].marker == "docs:output" else None
                found.append((block, after))
    return found


RUNNABLE = runnable_blocks()


def test_some_blocks_are_runnable():
    assert len(RUNNABLE) >= 3
    assert any(block.lang in PYTHON for block, _ in RUNNABLE) and any(block.lang in SHELL for block, _ in RUNNABLE)


@pytest.mark.parametrize("block,expected", RUNNABLE, ids=[b.where for b, _ in RUNNABLE])
def test_runnable_blocks_run(block, expected, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PATH"] = str(Path(sys.prefix) / "bin") + os.pathsep + env.get("PATH", "")
    env["OMP_NUM_THREADS"] = "1"
    if block.lang in PYTHON:
        command = [sys.executable, "-c", block.text]
    else:
        assert block.lang in SHELL, f"{block.where}: a runnable block must be shell or Python, not {block.lang!r}"
        command = ["bash", "-euo", "pipefail", "-c", block.text]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{block.where} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if expected is not None:
        assert proc.stdout.strip() == expected.text.strip(), (
            f"{block.where} printed\n{proc.stdout}\nbut {expected.where} shows\n{expected.text}")
