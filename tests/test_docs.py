"""The README and docs/ stay honest: links resolve, config examples validate, and every command
a reader is told to type is one the project runs (no servers needed)."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import pytest

from tasks.config import load_migrations

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
DOCUMENTS = [README, *PAGES]

_FENCE = re.compile(r"^([ \t]*)```([\w-]*)[^\n]*\n(.*?)^\1```[ \t]*$", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order; a block indented in a list is dedented."""
    return [(m.group(2), textwrap.dedent(m.group(3))) for m in _FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text with fenced code blocks and inline code taken out (links there are not links)."""
    text = _FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(markdown: Path) -> set[str]:
    """The anchors GitHub gives the headings of `markdown`: lowercase, punctuation dropped,
    spaces as dashes, and -1, -2… for repeats."""
    seen: dict[str, int] = {}
    result = set()
    for match in _HEADING.finditer(_FENCE.sub("", markdown.read_text())):
        slug = re.sub(r"[^\w\- ]", "", match.group(2).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(document: Path) -> list[str]:
    return [
        target
        for target in _LINK.findall(prose(document.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(document: Path):
    broken = []
    for target in relative_links(document):
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if not file.exists():
            broken.append(
                f"{target}: no file {file.relative_to(REPO) if file.is_relative_to(REPO) else file}"
            )
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{document.relative_to(REPO)}: " + "; ".join(broken)


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    missing = [p.name for p in PAGES if p.resolve() not in linked]
    assert not missing, f"README.md does not link docs/{', docs/'.join(missing)}"


def migrations_examples() -> list[tuple[str, str]]:
    """(where, YAML) of every complete example: a yaml block that starts with `migrations:`."""
    examples = []
    for document in (README, REPO / "docs" / "configuration.md"):
        for i, (language, body) in enumerate(fenced_blocks(document.read_text())):
            if language == "yaml" and body.startswith("migrations:"):
                examples.append((f"{document.relative_to(REPO)}#{i}", body))
    return examples


def test_the_configuration_page_has_an_example_for_each_source_and_target():
    kinds = set()
    for _, body in migrations_examples():
        source = re.search(r"source:\s*\{?\s*\n?\s*type: (\w+)", body)
        target = re.search(r"target:\s*\{?\s*\n?\s*type: (\w+)", body)
        mode = re.search(r"export_mode: (\w+)", body)
        if source and target:
            kinds.add((source.group(1) + (f"/{mode.group(1)}" if mode else ""), target.group(1)))
    sources = ["snowflake", "postgres", "timestream/query", "timestream/unload", "parquet"]
    missing = [(s, t) for s in sources for t in ("postgres", "influxdb") if (s, t) not in kinds]
    assert not missing, f"no complete example for {missing}"


@pytest.mark.parametrize("where,body", migrations_examples(), ids=[w for w, _ in migrations_examples()])
def test_every_complete_config_example_validates(where, body, tmp_path, monkeypatch):
    # `${NAME:-default}` takes its default here, whatever this machine's environment holds;
    # a `${NAME}` without one gets a value, as a reader would set it.
    for name, default in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}", body):
        if default:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, "example")
    path = tmp_path / "migrations.yaml"
    path.write_text(body)
    parsed = load_migrations(path)
    assert parsed.migrations, where


# Commands the README's bash blocks may hold besides `prefect-migrate`: each is run by the
# fresh-clone check (scripts/, the Prefect CLI and the modules the operator's loop starts).
KNOWN_COMMANDS = {
    "bash scripts/demo.sh": "sets up .venv and runs the demo against local servers (scripts/demo.sh)",
    "bash scripts/test.sh": "sets up .venv and runs the test suite (scripts/test.sh)",
    "bash scripts/setup.sh": "installs the servers' binaries and .venv (scripts/setup.sh)",
    "source .venv/bin/activate": "puts .venv/bin (prefect, prefect-migrate) first on PATH",
    "prefect server start": "Prefect's own CLI: the API server and UI the flows report to",
    "export PREFECT_API_URL=http://127.0.0.1:4200/api": "points the CLI and workers at that server",
    "prefect work-pool create migrations --type process": "the process pool prefect.yaml deploys to",
    "prefect --no-prompt deploy --all": "creates the deployments declared in prefect.yaml",
    "python -m deployments.register_blocks": "registers the project's block types (deployments/register_blocks.py)",
    "python -m deployments.automations --webhook-url https://hooks.example.com/migrations": (
        "creates the notification blocks and automations (deployments/automations.py)"
    ),
    "prefect worker start --pool migrations": "the worker that runs deployment runs from this checkout",
}


def shell_commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments and blank lines dropped."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(" ".join(words))
    return commands


def readme_commands() -> list[str]:
    return [
        command
        for language, body in fenced_blocks(README.read_text())
        if language in ("bash", "sh", "shell", "console")
        for command in shell_commands(body)
    ]


def is_prefect_migrate(command: str) -> bool:
    return shlex.split(command)[0].removeprefix(".venv/bin/") == "prefect-migrate"


def test_every_readme_command_is_one_the_fresh_clone_check_runs():
    unknown = [c for c in readme_commands() if not is_prefect_migrate(c) and c not in KNOWN_COMMANDS]
    assert not unknown, (
        f"README.md shows commands nothing checks (add them to KNOWN_COMMANDS, saying why): {unknown}"
    )


def test_every_prefect_migrate_line_in_the_readme_parses():
    """Parsed by the real CLI app (cyclopts), never run."""
    from flows.cli import app

    unparsed = []
    for command in filter(is_prefect_migrate, readme_commands()):
        try:
            app.parse_args(shlex.split(command)[1:], exit_on_error=False, print_error=False)
        except Exception as exc:
            unparsed.append(f"{command!r}: {type(exc).__name__}: {exc}")
    assert not unparsed, "prefect-migrate refuses README.md's command lines: " + "; ".join(unparsed)


def test_the_readme_shows_every_prefect_migrate_subcommand():
    used = {shlex.split(c)[1] for c in readme_commands() if is_prefect_migrate(c)}
    expected = {"run", "plan", "status", "jobs", "cancel", "rollback", "verify", "test-connections"}
    assert expected <= used, f"README.md never shows prefect-migrate {sorted(expected - used)}"
