"""The README and docs/ as a reader meets them: links that lead somewhere, a diagram
that names real files, commands and output that are what the program does, and
examples that run."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
_BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text with code blocks and inline code taken out: what Markdown renders as prose."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", text))


def blocks(text: str, language: str) -> list[str]:
    return [body for lang, body in _BLOCK.findall(text) if lang == language]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _FENCE.sub("", page.read_text()), re.MULTILINE):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in _LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{page.name}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.name}: {target}: no heading #{anchor} in {dest.name}")
    return broken


def test_slugs_are_githubs() -> None:
    assert slug("The `mailmand` command") == "the-mailmand-command"
    assert slug("Durability: what Redis keeps") == "durability-what-redis-keeps"
    assert slug("What made delivery fast, and where targets are still missed") == (
        "what-made-delivery-fast-and-where-targets-are-still-missed")
    assert slug("The producers' settings cache") == "the-producers-settings-cache"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A part\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-part) [gone](missing.md) [no anchor](other.md#nope) `[code](x.md)`\n"
                    "```\n[in a block](y.md)\n```\n[here](#page)\n# Page\n")
    assert broken_links(page) == ["page.md: missing.md: no such file",
                                  "page.md: other.md#nope: no heading #nope in other.md"]


def test_the_readme_is_a_front_door() -> None:
    lines = README.read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines: move the detail to docs/ and link it"


def test_the_readme_diagram_names_files_that_exist() -> None:
    text = README.read_text()
    diagram = _BLOCK.search(text[:text.index("## Quickstart")])
    assert diagram is not None, "the README's first block is its diagram"
    named = set(re.findall(r"[\w/]+\.py", diagram.group(2)))
    assert len(named) >= 5, named
    assert sorted(n for n in named if not (REPO / "mailmand" / n).is_file()) == []


def test_the_readme_commands_are_what_ci_runs() -> None:
    shell = "\n".join(blocks(README.read_text(), "sh"))
    assert "pip install . && mailmand demo" in shell
    test_command = re.search(r"^pip install -e '(\.\[[\w,]+\])' && (python -m pytest)$", shell, re.MULTILINE)
    assert test_command is not None, shell
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(rf"pip\" install -q -e '{re.escape(test_command.group(1))}'$", ci, re.MULTILINE), ci
    assert re.search(rf"^{test_command.group(2)}$", ci, re.MULTILINE), ci


def _normalised(output: str) -> list[str]:
    """Demo output with what differs per run (port, directory, id, times, column padding) made equal."""
    out = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", output)
    out = re.sub(r"\S*/mailmand-demo-\w+", "DIR", out)
    out = re.sub(r"\b[0-9a-f]{32}\b", "ID", out)
    out = re.sub(r"\b\d+\.\d\ds\b", "Ts", out)
    return [" ".join(line.split()) for line in out.strip().splitlines()]


def test_the_readme_shows_what_the_demo_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from mailmand.cli import main

    found = _BLOCK.findall(README.read_text())
    command = next(i for i, (lang, body) in enumerate(found) if lang == "sh" and "mailmand demo" in body)
    shown = found[command + 1][1]  # the block after the command is its output
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["demo"]) == 0
    assert _normalised(capsys.readouterr().out) == _normalised(shown)


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with what the examples open, and a configuration with a spool of its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MAILMAND_CACHE_DIR", "none")
    # Client() finds the file as the daemon does: never in the working directory, so it is named.
    monkeypatch.setenv("MAILMAND_CONFIG", str(tmp_path / "mailmand.yaml"))
    (tmp_path / "mailmand.yaml").write_text(
        f"email:\n  queue:\n    default: {{path: {tmp_path / 'spool'}}}\n"
        f"  server:\n    database: {{path: {tmp_path / 'store' / 'mailmand.db'}}}\n    smtp: {{host: localhost}}\n")
    (tmp_path / "invoice.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    (tmp_path / "message.eml").write_bytes(b"From: a@example.com\r\nTo: b@example.com\r\nSubject: s\r\n\r\nbody\r\n")
    return tmp_path


def _waiting(capsys: pytest.CaptureFixture[str]) -> int:
    """What `mailmand status --json` says waits in the spool."""
    import json

    from mailmand.cli import main

    capsys.readouterr()
    assert main(["status", "--json", "-c", "mailmand.yaml"]) == 0
    return int(json.loads(capsys.readouterr().out)["queue"]["waiting"])


@pytest.mark.parametrize(("page", "queued"), [(README, 2), (REPO / "docs" / "python-api.md", 6)],
                         ids=["README", "python-api"])
def test_the_python_example_runs(app_dir: Path, capsys: pytest.CaptureFixture[str], page: Path,
                                 queued: int) -> None:
    example = blocks(page.read_text(), "python")[0]
    scope: dict[str, object] = {"png_bytes": b"\x89PNG\r\n\x1a\n"}
    exec(compile(example, str(page), "exec"), scope)
    assert re.fullmatch(r"[0-9a-f]{32}", str(scope["msg_id"]))
    assert _waiting(capsys) == queued


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_yaml_examples_parse(page: Path) -> None:
    for example in blocks(page.read_text(), "yaml"):
        try:
            yaml.safe_load(example)
        except yaml.YAMLError as e:
            pytest.fail(f"{page.name}: a YAML example does not parse ({e}):\n{example}")
