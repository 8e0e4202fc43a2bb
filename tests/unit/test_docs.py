"""The documentation holds together: the site builds with `mkdocs build --strict` offline (no broken link,
no missing anchor, no page left out of the navigation), every pointer in the code to a document resolves to
a file (and a heading) of the repository, the code layout page names every module and no module that is
gone, and the README stays a short introduction whose first lines are the commands CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = next(folder for folder in Path(__file__).resolve().parents if (folder / "mkdocs.yml").is_file())
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CODE = ("pipeline", "trainer", "jobs", "cluster", "benchmarks", "tests")

# A document named in the code: a page of docs/ or an upper-case file at the root (README.md, CHANGELOG.md).
DOCUMENT = re.compile(r"(?<![\w/.])(docs/[\w/-]+\.md|[A-Z][A-Z_]+\.md|README)\b(?:,? \"(?:#+ )?([^\"\n]+)\")?")
# Pointers the trainer/ package still holds until its files are edited: they resolve to nothing here.
PENDING_IN_TRAINER: set[str] = set()


@pytest.mark.timeout(300)
def test_the_site_builds_strictly_offline(tmp_path):
    """Warnings are errors (mkdocs.yml's validation: broken links and anchors, pages not in the nav).
    No network: Material's fonts are off and no plugin fetches anything; proxies pointed nowhere prove it."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY":
           "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]
    site = tmp_path / "site"
    for page in ("index", "api", "design", "reference", "benchmarks", "layout", "changelog"):
        assert (site / f"{page}.html").is_file(), page
    api = (site / "api.html").read_text()
    for name in ("pipeline.loader.loaders.TrainLoader", "pipeline.loader.loaders.TrainLoader.set_epoch",
                 "pipeline.loader.loaders.EvalLoader", "trainer.model.AlexNet", "trainer.config.TrainConfig"):
        assert f'id="{name}"' in api, f"the API page lacks {name}"
    index = (site / "index.html").read_text()
    assert "img/dataflow.svg" in index and (site / "img" / "dataflow.svg").is_file()
    assert "fonts.googleapis.com" not in index  # theme.font: false, so the page loads offline


def headings(path: Path) -> set[str]:
    """A Markdown file's headings, as written and as their anchors."""
    found = set()
    for line in path.read_text().splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            title = match.group(1).strip()
            found |= {title, re.sub(r"[^\w\s-]", "", title.lower()).strip().replace(" ", "-")}
    return found


def code_files() -> list[Path]:
    files = [path for package in CODE for path in (ROOT / package).rglob("*") if path.is_file()
             and (path.suffix in (".py", ".yaml", ".yml", ".toml") or path.name == "Dockerfile")]
    return sorted(files + [ROOT / "pyproject.toml", ROOT / ".ci" / "run"])


def dangling_pointers() -> list[str]:
    dangling = []
    for path in code_files():
        relative = str(path.relative_to(ROOT))
        if path == Path(__file__).resolve():  # its own examples of pointers
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in DOCUMENT.finditer(line):
                document, section = match.groups()
                if relative.startswith("trainer/") and document in PENDING_IN_TRAINER:
                    continue
                if document == "README" and not section:
                    continue  # the word in prose ("the README's commands"), not a pointer to a part of it
                target = ROOT / ("README.md" if document == "README" else document)
                if not target.is_file():
                    dangling.append(f"{relative}:{number}: {document} is not a file of the repository")
                elif section and section not in headings(target):
                    dangling.append(f"{relative}:{number}: {document} has no heading {section!r}")
    return dangling


def test_every_pointer_in_the_code_resolves():
    assert dangling_pointers() == []


def test_the_pointer_check_sees_a_dangling_one(tmp_path, monkeypatch):
    assert DOCUMENT.search('see docs/design.md, "Manifest"').groups() == ("docs/design.md", "Manifest")
    assert DOCUMENT.search('(README "## Demo")').groups() == ("README", "Demo")
    assert DOCUMENT.search("as DESIGN.md says").groups() == ("DESIGN.md", None)
    assert "Manifest" in headings(DOCS / "design.md") and "class-indices" in headings(DOCS / "design.md")


def mapped_paths() -> set[str]:
    """The files the layout page's map names: two spaces of indent per folder level, names before the text."""
    text = (DOCS / "layout.md").read_text()
    section = text[text.index("### Modules"):]
    tree = re.findall(r"^```\n(.*?)^```", section, re.S | re.M)[0]
    folders, paths = [], set()
    for line in tree.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        names = re.split(r"\s{2,}", line.strip())[0]
        folders = folders[:depth]
        for name in names.split(", "):
            if name.endswith("/"):
                folders.append(name)
            else:
                paths.add("".join(folders) + name)
    return paths


def test_the_layout_map_names_every_module():
    modules = {str(path.relative_to(ROOT)) for package in ("pipeline", "trainer", "jobs")
               for path in (ROOT / package).rglob("*.py") if path.name != "__init__.py"}
    mapped = {path for path in mapped_paths()
              if path.split("/")[0] in ("pipeline", "trainer", "jobs") and path.endswith(".py")}
    assert "pipeline/loader/plan.py" in mapped and any(p.startswith("trainer/") for p in mapped)  # it was read
    assert sorted(modules - mapped) == [], "modules docs/layout.md's map does not name"
    assert sorted(mapped - modules) == [], "docs/layout.md's map names modules that are gone"


def test_the_readme_is_short_and_opens_with_the_commands_ci_runs():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail into docs/"
    block = lines[lines.index("```bash") + 1: lines.index("```")]
    install, demo, test = (line.split("#")[0].strip() for line in block)
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci and test in ci and demo.endswith("alexnet demo --out demo-out")
    assert lines.index("```bash") < 10  # the first thing a reader sees after the opening paragraph
    assert 'pytest -m "not slow"' in README.read_text()


@pytest.mark.parametrize("page", ["README.md", "docs/imagenette.md"])
def test_the_imagenette_results_have_their_markers(page):
    text = (ROOT / page).read_text()
    start, end = "<!-- imagenette-results:start -->", "<!-- imagenette-results:end -->"
    assert text.count(start) == 1 and text.count(end) == 1 and text.index(start) < text.index(end)


def test_every_page_is_in_the_navigation():
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(entry):
        if isinstance(entry, str):
            return [entry]
        if isinstance(entry, list):
            return [p for item in entry for p in pages(item)]
        return [p for value in entry.values() for p in pages(value)]

    assert sorted(pages(nav)) == sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
