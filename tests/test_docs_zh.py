"""
The Chinese documents against the English ones, so that they cannot drift
apart unnoticed: README.zh-CN.md shows README.md's commands (install and
start, the whole test suite, its fast tier), every key,
flag and default in docs/configuration.md's tables is in
docs/zh-CN/configuration.md's, every `code` of an English page that has a
Chinese one (a key, a command, an event type, a message) is in the Chinese
page too, and every relative link in the Chinese
documents (and the links between the languages) leads to a file and heading
that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import FAST_TIER
from tests.test_docs import CONFIGURATION, table_rows

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
README_ZH = ROOT / "README.zh-CN.md"
CONFIGURATION_ZH = ROOT / "docs" / "zh-CN" / "configuration.md"
CHINESE_DOCS = [README_ZH, *sorted((ROOT / "docs" / "zh-CN").glob("*.md"))]

# The English heading (or line) before each table of docs/configuration.md,
# the Chinese one before the same table, and the columns whose `values`
# must be the same in both: keys, defaults, flags, examples.
TABLES = [
    ("## Server: `server.toml`", "## 服务器：`server.toml`", (0, 1, 2)),
    ("## Client: `client.toml`", "## 客户端：`client.toml`", (0, 1, 2)),
    ("### HTTPS and certificates (`vhostHTTPSPort`, `acme.*`)", "### HTTPS 与证书（`vhostHTTPSPort`、`acme.*`）", (0, 1)),
    ("### Who may connect: `access.*`", "### 谁可以连接：`access.*`", (0, 1)),
    ("**Website requests across nodes (`cluster.*`).**", "**跨节点的网站请求（`cluster.*`）。**", (0, 1)),
    ("### Tunnels: `[[proxies]]`", "### 隧道：`[[proxies]]`", (0, 1)),
    ("## Heartbeats", "## 心跳", (1, 2)),
    ("Server (`frps.toml`):", "服务器（`frps.toml`）：", (0,)),
    ("Client (`frpc.toml`):", "客户端（`frpc.toml`）：", (0,)),
    ("In a `[[proxies]]` entry:", "在 `[[proxies]]` 条目中：", (0,)),
    ("### The server", "### 服务器", (0, 1)),
    ("### The client", "### 客户端", ()),
    ("## Command-line values", "## 命令行取值", (0, 2)),
]


def backticked(cell: str) -> "list[str]":
    return re.findall(r"`([^`]+)`", cell)


def test_every_table_of_the_english_configuration_is_checked():
    # A table added to docs/configuration.md must be added to TABLES too.
    separators = len(re.findall(r"^\|(?: *-+ *\|)+$", CONFIGURATION, re.M))
    assert separators == len(TABLES), f"docs/configuration.md has {separators} tables, TABLES lists {len(TABLES)}"


def test_readme_zh_shows_the_readmes_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = re.search(r'^TEST_COMMAND="([^"]+)"', ci, re.M).group(1)
    for command in (test_command, "pip install . && twistd -n gotaxy-server", FAST_TIER):
        assert command in README, f"README.md no longer shows {command!r}; update this test and README.zh-CN.md"
        assert command in README_ZH.read_text(), f"README.zh-CN.md does not show README.md's command {command!r}"


@pytest.mark.parametrize("english, chinese, columns", TABLES, ids=[t[0] for t in TABLES])
def test_chinese_configuration_has_every_key_flag_and_default(english, chinese, columns):
    text_zh = CONFIGURATION_ZH.read_text()
    assert chinese in text_zh, f"docs/zh-CN/configuration.md has no {chinese!r} (the English {english!r})"
    rows_en, rows_zh = table_rows(english), table_rows(chinese, text_zh)
    assert rows_en, english

    def by_key(rows):
        # A row is known by the `keys` or `--flags` of its first cell; one
        # whose first cell is prose (the heartbeat table) by its position.
        return {tuple(backticked(row[0])) or (f"row {i + 1}",): row for i, row in enumerate(rows)}

    en, zh = by_key(rows_en), by_key(rows_zh)
    for key, row in en.items():
        name = ", ".join(key)
        assert key in zh, f"docs/zh-CN/configuration.md ({chinese}) lacks the row for {name}"
        for column in columns:
            assert backticked(zh[key][column]) == backticked(row[column]), (
                f"docs/zh-CN/configuration.md ({chinese}), {name}: column {column + 1} shows "
                f"{zh[key][column]!r}, the English {row[column]!r}"
            )
    extra = set(zh) - set(en)
    assert not extra, f"docs/zh-CN/configuration.md ({chinese}) has rows the English lacks: {sorted(extra)}"


def slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> "set[str]":
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def relative_links(path: Path) -> "list[str]":
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("path", CHINESE_DOCS, ids=[p.name for p in CHINESE_DOCS])
def test_every_relative_link_resolves(path):
    links = relative_links(path)
    assert links
    for link in links:
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        assert resolved.is_file(), f"{path.relative_to(ROOT)}: link {link!r} leads to no file"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{path.relative_to(ROOT)}: link {link!r}: no such heading"


@pytest.mark.parametrize(
    "source, target",
    [("README.md", "README.zh-CN.md"), ("README.md", "docs/zh-CN/quickstart.md"),
     ("README.zh-CN.md", "README.md"), ("README.zh-CN.md", "docs/zh-CN/quickstart.md"),
     ("docs/configuration.md", "docs/zh-CN/configuration.md"),
     ("docs/zh-CN/configuration.md", "docs/configuration.md")],
)
def test_the_languages_link_to_each_other(source, target):
    path = ROOT / source
    assert any((path.parent / link.partition("#")[0]).resolve() == (ROOT / target).resolve()
               for link in relative_links(path)), f"{source} does not link to {target}"


#: The English pages that have a Chinese translation (docs/zh-CN/NAME).
TRANSLATED = sorted(p.name for p in (ROOT / "docs" / "zh-CN").glob("*.md") if (ROOT / "docs" / p.name).is_file())


def code_spans(path: Path) -> "set[str]":
    """The inline `code` of a page, blanks collapsed; fenced and indented blocks left out (they may be translated)."""
    text = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", path.read_text(), flags=re.M | re.S)
    text = re.sub(r"^(?:    |\t).*$", "", text, flags=re.M)
    return {re.sub(r"\s+", " ", span.strip()) for span in re.findall(r"`([^`]+)`", text)}


def test_the_translated_pages_are_the_ones_expected():
    # A new Chinese page is checked below as soon as it exists; these must stay translated.
    assert {"architecture.md", "configuration.md", "console.md", "metrics.md", "notifications.md",
            "operations.md", "panel.md", "protocol.md", "security.md", "websites.md"} <= set(TRANSLATED)


PAIRS = [("README.md", "README.zh-CN.md")] + [(f"docs/{name}", f"docs/zh-CN/{name}") for name in TRANSLATED]


@pytest.mark.parametrize("english, chinese", PAIRS, ids=[pair[0] for pair in PAIRS])
def test_the_chinese_page_shows_every_code_of_the_english(english, chinese):
    # What a reader types or looks for (keys, commands, event types, log lines) is the
    # same in both languages; a section added in English without its Chinese fails here.
    missing = code_spans(ROOT / english) - code_spans(ROOT / chinese)
    assert not missing, (
        f"{chinese} lacks what {english} shows as code: {sorted(missing)[:20]}; "
        f"translate the new English text into {chinese} (code, keys and commands as they are)"
    )
