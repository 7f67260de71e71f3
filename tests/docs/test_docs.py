"""The documentation site builds cleanly, and the README's quick start matches its home page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from support.env import ROOT

DOCS = ROOT / "docs"


def _require_mkdocs() -> None:
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is required under CI (the dev extra installs it)")
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")


def _nav_files() -> list[str]:
    """Return the pages named in mkdocs.yml's nav (``Title: path.md`` entries)."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:") :]
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, re.M)


def test_nav_pages_exist():
    pages = _nav_files()
    assert "index.md" in pages and "intro/tutorial.md" in pages, pages
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"pages in mkdocs.yml's nav but not in docs/: {missing}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once by ``mkdocs build --strict`` (which must succeed)."""
    _require_mkdocs()
    site = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site


def test_mkdocs_build_is_clean(site: Path) -> None:
    for page in _nav_files():
        built = site / ("index.html" if page == "index.md" else page[: -len(".md")] + "/index.html")
        assert built.is_file(), f"{page} was not built ({built})"
    # mkdocs copies every file of docs/ that is not a page into the site: scripts live elsewhere.
    scripts = sorted(str(p.relative_to(site)) for p in site.rglob("*.py"))
    assert not scripts, f"Python files copied into the site: {scripts}"

    # Offline: no page loads a script, a stylesheet, an image or a font from another host...
    external = {
        f"{html.relative_to(site)}: <{tag} {url}>"
        for html in site.rglob("*.html")
        for tag, url in _loaded_urls(html.read_text(encoding="utf-8"))
        if re.match(r"(https?:)?//", url)
    }
    # ... nor does a stylesheet.
    external |= {
        f"{css.relative_to(site)}: {ref}"
        for css in site.rglob("*.css")
        for ref in re.findall(
            r"@import[^;]*|url\(\s*['\"]?(?:https?:)?//[^)]*\)", css.read_text("utf-8")
        )
    }
    assert not external, "the site loads from other hosts:\n" + "\n".join(sorted(external))

    # ... and its code is highlighted all the same, when the site is built (Pygments' classes).
    tutorial = (site / "intro" / "tutorial" / "index.html").read_text(encoding="utf-8")
    assert '<div class="codehilite">' in tutorial
    assert '<span class="kn">import</span>' in tutorial, "Python blocks are not highlighted"
    assert 'python<span class="w"> </span>manage.py' in tutorial, "sh blocks are not highlighted"
    assert ".codehilite .kn {" in (site / "css" / "pygments.css").read_text(encoding="utf-8")
    assert 'href="../../css/pygments.css"' in tutorial, (
        "the page does not load the highlighting styles"
    )


def test_wide_tables_scroll_in_their_own_box(site: Path) -> None:
    """A table or a code block wider than the main column scrolls within its box: the page
    itself keeps the window's width (performance.md's results table has eleven columns)."""
    extra = (site / "css" / "extra.css").read_text(encoding="utf-8")
    rule = re.search(r"\[role=\"main\"\] table\s*\{([^}]*)\}", extra)
    assert rule, "docs/css/extra.css has no rule for the tables of the main column"
    declarations = {
        d.split(":")[0].strip(): d.split(":")[1].strip() for d in rule[1].split(";") if ":" in d
    }
    assert declarations.get("display") == "block" and declarations.get("overflow-x") == "auto"
    assert declarations.get("max-width") == "100%", declarations
    performance = (site / "performance" / "index.html").read_text("utf-8")
    assert 'href="../css/extra.css"' in performance, "the page does not load docs/css/extra.css"
    # Code blocks: the theme's Bootstrap scrolls a <pre> that is too wide.
    assert re.search(
        r"\bpre\{[^}]*overflow:auto", (site / "css" / "bootstrap.min.css").read_text("utf-8")
    )


_PROBE = """<script>window.addEventListener("load", function () {
  var page = document.documentElement, wide = [];
  document.querySelectorAll("[role=main] *").forEach(function (e) {
    var right = e.getBoundingClientRect().right;
    var inside = e.parentElement && e.parentElement.closest("pre, table");
    if (right > page.clientWidth + 0.5 && !inside)
      wide.push(e.tagName + " " + Math.round(right) + " "
                + e.textContent.replace(/\\s+/g, " ").slice(0, 60));
  });
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(
    {scroll: page.scrollWidth, client: page.clientWidth, wide: wide});
  document.body.appendChild(out);
});</script>"""


@pytest.mark.parametrize("page", ["performance", "intro/tutorial"])
def test_page_fits_a_1280_px_window(site: Path, tmp_path: Path, page: str) -> None:
    """Measured in a headless Chromium when one is installed (Debian's ``chromium``)."""
    import json
    import shutil

    browser = next(
        (
            path
            for name in ("chromium", "chromium-browser", "google-chrome")
            if (path := shutil.which(name))
        ),
        None,
    )
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required under CI (.ci/run installs Debian's chromium)")
        pytest.skip("no headless browser (chromium) installed; the CSS is checked on its own")
    html = site / page / "index.html"
    probe = html.with_name("probe.html")
    probe.write_text(html.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"))
    args = [
        browser,
        "--headless",
        "--disable-gpu",
        "--window-size=1280,900",
        "--virtual-time-budget=5000",
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    args += [f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(args, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run in {browser}: {dom[-2000:]}"
    measured = json.loads(found[1].replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert measured["scroll"] <= measured["client"] and not measured["wide"], measured


class _LoadedUrls(HTMLParser):
    """The URLs a page loads by itself (not the links a reader may follow)."""

    LOADS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "link": "href"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = self.LOADS.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append((tag, value))


def _loaded_urls(html: str) -> list[tuple[str, str]]:
    parser = _LoadedUrls()
    parser.feed(html)
    return parser.urls


def _code_blocks(markdown: str, lang: str = "sh") -> list[list[str]]:
    """Return the ```lang blocks of ``markdown``, each as its non-empty, non-comment lines."""
    blocks = re.findall(rf"^```{lang}[ \t]*\n(.*?)^```[ \t]*$", markdown, re.S | re.M)
    return [
        [
            line.strip()
            for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        for block in blocks
    ]


def _section(markdown: str, title: str) -> str | None:
    match = re.search(
        rf"^##[ \t]+{re.escape(title)}[ \t]*\n(.*?)(?=^##[ \t]|\Z)", markdown, re.S | re.M
    )
    return match.group(1) if match else None


def test_readme_quick_start_matches_docs_home():
    readme = (
        (ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else ""
    )
    section = _section(readme, "Quick start")
    blocks = _code_blocks(section) if section is not None else []
    if len(blocks) != 1:
        message = (
            f"README.md needs a '## Quick start' section with one ```sh block (found {len(blocks)})"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    commands = blocks[0]
    assert len(commands) == 2, (
        f"the README's quick start must hold exactly two commands: {commands}"
    )
    assert commands[0].startswith("pip install -e . ") and "manage.py runserver" in commands[0], (
        commands
    )
    assert "python -m pytest" in commands[1], commands
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands[1] in ci_lines, f".ci/run must run the README's test command: {commands[1]}"

    home = (DOCS / "index.md").read_text(encoding="utf-8")
    home_section = _section(home, "Quick start")
    assert home_section is not None, "docs/index.md has no '## Quick start' section"
    home_blocks = _code_blocks(home_section)
    assert home_blocks, "docs/index.md's quick start has no ```sh block"
    assert home_blocks[0] == commands, (
        f"docs/index.md's quick start {home_blocks[0]} differs from the README's {commands}"
    )


def test_every_setting_check_and_command_is_in_the_reference():
    import microframe.conf.global_settings as defaults

    settings_ref = (DOCS / "ref" / "settings.md").read_text(encoding="utf-8")
    assert not [n for n in dir(defaults) if n.isupper() and f"`{n}`" not in settings_ref]
    ids: set[str] = set()
    for path in (ROOT / "microframe").rglob("*.py"):
        ids |= set(re.findall(r'id="([a-z]+\.[EWICD]\d{3})"', path.read_text(encoding="utf-8")))
    checks_ref = (DOCS / "ref" / "checks.md").read_text(encoding="utf-8")
    assert len(ids) > 30
    assert not sorted(i for i in ids if f"**{i}**" not in checks_ref and not i.startswith("myapp."))
    commands_ref = (DOCS / "ref" / "commands.md").read_text(encoding="utf-8")
    commands = [
        p.stem
        for pattern in ("management/commands/[!_]*.py", "contrib/*/management/commands/[!_]*.py")
        for p in (ROOT / "microframe").glob(pattern)
    ]
    assert "register" in commands
    assert not [c for c in commands if f"## `{c}`" not in commands_ref]
    from microframe.core import signals
    from microframe.utils.signals import Signal

    signals_ref = (DOCS / "ref" / "signals.md").read_text(encoding="utf-8")
    sent = [n for n, v in vars(signals).items() if isinstance(v, Signal)]
    assert len(sent) >= 10
    assert not [n for n in sent if f"### `{n}`" not in signals_ref]
