"""The documentation holds together: every relative link in README.md, docs/ and any other
Markdown file of the repository (compose/README.md, say) reaches a file
that exists and, with a #fragment, a heading in it; every page links back to an index; and the
KV layout page names every key catalog/kv_layout.py defines. (The generated command reference
is checked against the parsers in test_cli_reference.)"""
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DOCS_PAGES = sorted(DOCS.rglob("*.md"))
# Every other Markdown file of the repository; hidden folders (.venv, .stack, ...) and mutmut's copy are not ours.
OTHERS = sorted(p for p in ROOT.rglob("*.md") if p != ROOT / "README.md" and DOCS not in p.parents
                and not any(part.startswith(".") or part == "mutants" for part in p.relative_to(ROOT).parts))
PAGES = [ROOT / "README.md"] + DOCS_PAGES + OTHERS

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def prose(text: str) -> str:
    """The text without code blocks and inline code, where a [x](y) is no link."""
    return CODE.sub("", FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed (hyphens
    and underscores kept), each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)        # a link's text only
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    found, seen = set(), {}
    for _, title in HEADING.findall(FENCE.sub("", path.read_text())):
        a = anchor(title)
        n = seen.get(a, 0)
        seen[a] = n + 1
        found.add(a if n == 0 else f"{a}-{n}")
    found |= set(re.findall(r'<a\s+(?:name|id)="([^"]+)"', path.read_text()))
    return found


def links(path: Path):
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue                                       # http:, https:, mailto: ...
        yield target


def broken_links(path: Path) -> list:
    broken = []
    for target in links(path):
        file_part, _, fragment = target.partition("#")
        dest = path if not file_part else (path.parent / unquote(file_part)).resolve()
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if fragment and dest.is_file() and dest.suffix == ".md" and unquote(fragment) not in anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.name}")
    return broken


def test_the_anchor_rule_is_githubs():
    assert anchor("How a container gets traffic") == "how-a-container-gets-traffic"
    assert anchor("Gating across hosts: gatekeeper decides, each host's registrator applies") == \
        "gating-across-hosts-gatekeeper-decides-each-hosts-registrator-applies"
    assert anchor("Waiting for a version: `gatekeeper wait`") == "waiting-for-a-version-gatekeeper-wait"
    assert anchor("Past one machine: 20 hosts' agents, 5,000 instances") == \
        "past-one-machine-20-hosts-agents-5000-instances"
    assert anchor("proxy_reloader and nginx") == "proxy_reloader-and-nginx"


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#a-section) [ok](#page) `[code](missing.md)`\n\n"
                    "```\n[also code](missing.md)\n```\n\n"
                    "[gone](missing.md) [no section](other.md#nowhere) [here](#nowhere-here) "
                    "[web](https://example.com/x.md)\n")
    assert broken_links(page) == ["missing.md: no such file",
                                  "other.md#nowhere: no heading #nowhere in other.md",
                                  "#nowhere-here: no heading #nowhere-here in page.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_its_file_and_heading(page):
    assert broken_links(page) == [], f"{page.relative_to(ROOT)} has broken links"


def test_every_docs_page_is_in_the_index_and_links_back():
    index = (DOCS / "README.md").read_text()
    for page in DOCS_PAGES:
        if page == DOCS / "README.md":
            continue
        rel = page.relative_to(DOCS).as_posix()
        assert f"]({rel})" in index, f"docs/README.md does not link to {rel}"
        first = page.read_text().split("\n\n", 2)[1]
        targets = {(page.parent / t.partition("#")[0]).resolve() for t in links(page) if not t.startswith("#")}
        assert targets & {(DOCS / "README.md").resolve(), (ROOT / "README.md").resolve()}, \
            f"{rel} links back to no index"
        assert first.strip() and not first.startswith(("#", "|", "```", "-")), f"{rel} opens without its purpose"


def test_the_readme_links_to_the_docs_index_and_stays_short():
    text = (ROOT / "README.md").read_text()
    assert "(docs/README.md)" in text
    assert len(text.splitlines()) <= 250, "README.md is the entry page: details belong in docs/"


def test_the_kv_layout_page_names_every_key():
    import catalog.kv_layout as kv
    page = (DOCS / "reference" / "kv-layout.md").read_text()
    keys = {name: value for name, value in vars(kv).items() if name.isupper() and isinstance(value, str)}
    assert len(keys) >= 10
    missing = [f"{name} = {value!r}" for name, value in keys.items() if f"`{value}" not in page]
    assert missing == [], "docs/reference/kv-layout.md does not name these keys"
