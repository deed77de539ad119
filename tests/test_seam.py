"""The plug-in seam holds: tasks and flows never branch on a system's type, every registry
entry resolves to a settings model that builds its block, and every block declares the
capabilities of the protocol it serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from blocks import registry
from blocks.seam import Ledger, PointTarget, RowTarget, Source, Staging, Target
from blocks.settings import SystemSettings
from tasks.config import load_migrations, migrations_path

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PACKAGES = ("postgres", "snowflake", "timestream", "parquet", "influxdb", "staging", "notify")
BRANCHING = [
    (re.compile(r"""\.type\s*[!=]=\s*["']|["']\s*[!=]=\s*\w+(\.\w+)*\.type\b"""), "compares a config type"),
    (re.compile(r"isinstance\([^)]*Settings\b"), "isinstance on a settings class"),
    (re.compile(r"sys\.modules"), "probes sys.modules"),
    (
        re.compile(rf"^\s*(from|import)\s+blocks\.({'|'.join(SYSTEM_PACKAGES)})\b", re.MULTILINE),
        "imports a system's package (go through the registry and the protocols)",
    ),
]


def _composition_modules() -> list[Path]:
    return sorted([*ROOT.glob("tasks/*.py"), *ROOT.glob("flows/*.py")])


@pytest.mark.parametrize("path", _composition_modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_tasks_and_flows_never_branch_on_a_system(path: Path):
    text = path.read_text()
    found = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {why}: {m.group(0).strip()}"
        for pattern, why in BRANCHING
        for m in pattern.finditer(text)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("kind", "type_name"),
    [(kind, t) for kind in ("SOURCES", "TARGETS", "LEDGERS", "STAGING") for t in getattr(registry, kind)],
)
def test_every_registry_entry_is_a_settings_model_for_its_type(kind, type_name):
    model = registry.settings_model(getattr(registry, kind)[type_name])
    assert model.model_fields["type"].annotation.__args__ == (type_name,)
    assert callable(getattr(model, "build", None))
    if kind == "LEDGERS":
        assert model.holds_ledger and callable(getattr(model, "build_ledger", None))
    if kind == "TARGETS" and model.holds_ledger:
        assert type_name in registry.LEDGERS, f"{type_name} keeps ledgers but is not in LEDGERS"


SOURCE_CAPABILITIES = ("schema_can_drift", "stages_by_reference", "time_unit", "reads_table_files")
TARGET_CAPABILITIES = (
    "transactional_load",
    "load_modes",
    "time_unit",
    "keeps_row_provenance",
    "writes_points",
    "holds_ledger",
    "time_range",
    "display_name",
)


@pytest.mark.parametrize(
    ("kind", "capabilities"), [("SOURCES", SOURCE_CAPABILITIES), ("TARGETS", TARGET_CAPABILITIES)]
)
def test_settings_declare_their_systems_capabilities(kind, capabilities):
    for type_name, path in getattr(registry, kind).items():
        model = registry.settings_model(path)
        missing = [c for c in capabilities if not hasattr(model, c)]
        assert not missing, f"{type_name} settings lack {missing}"
        assert issubclass(model, SystemSettings)


@pytest.mark.parametrize("export_mode", ["query", "unload"])
def test_the_example_migrations_build_blocks_that_serve_the_protocols(monkeypatch, export_mode):
    """Every source, target, staging and ledger the shipped migrations.yaml names builds
    (no I/O happens before check()) into a block that implements its protocol, with the same
    capabilities as its settings, including those that depend on the settings' values
    (a Timestream source stages by reference in unload mode only)."""
    monkeypatch.setenv("TIMESTREAM_EXPORT_MODE", export_mode)
    monkeypatch.setenv("TIMESTREAM_UNLOAD_LOCATION", "s3://unload-bucket/exports/")
    monkeypatch.setenv("PGPASSWORD", "not-used")
    for name in ("SNOWFLAKE_PASSWORD", "INFLUX_TOKEN", "INFLUX_PASSWORD", "PG_SOURCE_PASSWORD"):
        monkeypatch.setenv(name, "not-used")
    from tasks.connections import build_ledger, build_source, build_staging, build_target

    seen: set[str] = set()
    for migration, spec in load_migrations(migrations_path()).migrations.items():
        source, target = build_source(spec), build_target(spec)
        assert isinstance(source, Source), f"{migration}: {type(source).__name__} is not a Source"
        assert isinstance(target, Target), f"{migration}: {type(target).__name__} is not a Target"
        assert isinstance(target, PointTarget if target.writes_points else RowTarget), migration
        assert isinstance(build_staging(spec), Staging), migration
        assert isinstance(build_ledger(spec), Ledger), migration
        for capability in SOURCE_CAPABILITIES:
            assert getattr(source, capability) == getattr(spec.source, capability), (migration, capability)
        for capability in TARGET_CAPABILITIES:
            assert getattr(target, capability) == getattr(spec.target, capability), (migration, capability)
        if spec.source.type == "timestream":
            assert source.stages_by_reference is (export_mode == "unload"), migration
        seen |= {spec.source.type, spec.target.type}
    assert seen >= set(registry.SOURCES) | set(registry.TARGETS), "migrations.yaml should show every system"
