"""The README is the front door and docs/ the manual: every relative link in them must lead somewhere.

For README.md and every docs/**/*.md, each Markdown link `[text](target)`, image
`![alt](target)` and reference definition `[id]: target` whose target is not a URL
(http:, https:, mailto:, any scheme) is resolved against the file's directory and must
name an existing file or directory; `#anchor` (alone: the same file, or after a .md
path) must match a heading of that file under GitHub's slug rule. Links inside fenced
code blocks and inline code spans are not links and are ignored.

The README also keeps the two lines .ci/run reads (`pip install ... # demo` and
`pip install ... # tests`) and stays short.
"""
import pathlib
import re
import urllib.parse

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
MAX_README_LINES = 260

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target "title") or ![alt](target); text may hold one level of brackets.
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def _outside_fences(text: str):
    """(line number, line) for every line not inside a fenced code block."""
    fence = None
    for number, line in enumerate(text.split("\n"), start=1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            yield number, line
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                and not line.strip()[len(match.group(1)):].strip():
            fence = None


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text: lowercase, punctuation but hyphens dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())                  # \w keeps letters, digits and _
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    """Every anchor a Markdown file offers: its headings' slugs (-1, -2, ... for repeats), <a name>."""
    found, seen = set(), {}
    for _, line in _outside_fences(path.read_text(encoding="utf-8")):
        heading = _HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(_HTML_ANCHOR.findall(line))
    return found


def links(path: pathlib.Path):
    """(line number, target) of every link in a Markdown file, outside code."""
    for number, line in _outside_fences(path.read_text(encoding="utf-8")):
        line = _CODE_SPAN.sub("", line)
        reference = _REFERENCE.match(line)
        targets = [reference.group(1)] if reference else []
        targets += _INLINE_LINK.findall(line)
        for target in targets:
            yield number, target.strip("<>")


def broken_links(files, root: pathlib.Path) -> list[str]:
    """`file:line: target (why)` for every relative link whose file, directory or anchor is missing."""
    problems, anchor_cache = [], {}
    for path in files:
        for number, target in links(path):
            if _SCHEME.match(target):
                continue
            where = f"{path.relative_to(root)}:{number}: {target}"
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / urllib.parse.unquote(file_part)).resolve() if file_part else path
            if not resolved.exists():
                problems.append(f"{where} (no such file or directory)")
                continue
            if anchor and resolved.is_file() and resolved.suffix == ".md":
                if resolved not in anchor_cache:
                    anchor_cache[resolved] = anchors(resolved)
                if urllib.parse.unquote(anchor) not in anchor_cache[resolved]:
                    problems.append(f"{where} (no heading with that anchor in {resolved.name})")
    return problems


def _markdown_files() -> list[pathlib.Path]:
    return [README] + sorted((REPO_ROOT / "docs").rglob("*.md"))


def test_every_relative_link_in_the_readme_and_docs_resolves():
    files = _markdown_files()
    assert len(files) > 10, files   # the README and the docs pages were all found
    problems = broken_links(files, REPO_ROOT)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_checker_finds_broken_files_and_anchors_and_ignores_code(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## Planning a run on a pod (`--mode=plan`)\n\n## Same\n\n## Same\n")
    (tmp_path / "README.md").write_text(
        "# Top\n\n"
        "[ok](docs/page.md) [ok](docs/page.md#planning-a-run-on-a-pod---modeplan) "
        "[ok](docs/page.md#same-1) [ok](#top) [ok](docs/) ![ok](docs/page.md) [web](https://x.org/a)\n"
        "[gone](docs/missing.md)\n"
        "![gone](docs/missing.png)\n"
        "[bad anchor](docs/page.md#same-2) [bad local](#nowhere)\n"
        "`[in code](docs/missing.md)`\n"
        "```\n[in a fence](docs/missing.md)\n```\n"
        "[ref]: docs/gone/\n")
    problems = broken_links([tmp_path / "README.md", tmp_path / "docs" / "page.md"], tmp_path)
    assert [p.split(" (")[0] for p in problems] == [
        "README.md:4: docs/missing.md",
        "README.md:5: docs/missing.png",
        "README.md:6: docs/page.md#same-2",
        "README.md:6: #nowhere",
        "README.md:11: docs/gone/",
    ], problems


def test_github_slugs():
    assert slug("Which objective aligns languages? (the study, and what works at small scale)") == \
        "which-objective-aligns-languages-the-study-and-what-works-at-small-scale"
    assert slug("The small lab: multilinguality from MLM alone (`configs/studies/lab.py`)") == \
        "the-small-lab-multilinguality-from-mlm-alone-configsstudieslabpy"
    assert slug("Starting from a published checkpoint, and handing it back") == \
        "starting-from-a-published-checkpoint-and-handing-it-back"


def test_the_readme_stays_a_front_door_with_the_ci_lines():
    lines = README.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move the detail to a page in docs/")
    for marker in ("demo", "tests"):
        marked = [line for line in lines if line.endswith(f"# {marker}")]
        assert len(marked) == 1, f"README.md needs exactly one line ending in '# {marker}': {marked}"
        # .ci/run reads it with: grep -m1 -E "^pip install .*# <marker>$" README.md
        assert re.match(rf"^pip install .*# {marker}$", marked[0]), marked[0]
