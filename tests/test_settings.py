"""Settings from the environment: one object, checked values, clear errors, one table in the README."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from schemas.settings import (
    DEFAULT_PREFIX,
    VARIABLES,
    Settings,
    SettingsError,
    current_settings,
    settings_table,
)

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\b(?:DJ|SYSID)_[A-Z_]+\b")


def test_defaults_when_nothing_is_set():
    settings = Settings.from_environ({})
    assert settings == Settings()
    assert settings.uses_embedded and settings.schema_prefix == DEFAULT_PREFIX
    assert settings.checkpoint_every == 1 and settings.stores == {} and settings.debug is False
    assert Settings.from_environ({}, default_prefix="sysid_demo_").schema_prefix == "sysid_demo_"
    assert (
        Settings.from_environ({"SYSID_SCHEMA_PREFIX": "mine_"}, default_prefix="x_").schema_prefix == "mine_"
    )


def test_every_variable_is_read_and_converted(tmp_path):
    env = {
        "DJ_HOST": "db.example.org",
        "DJ_USER": "alice",
        "DJ_PASS": "",
        "DJ_PORT": "3307",
        "DJ_BACKEND": "MariaDB",
        "DJ_STORES": '{"models": {"protocol": "file", "location": "/m"}}',
        "SYSID_SCHEMA_PREFIX": "lab_",
        "SYSID_HOME": str(tmp_path),
        "SYSID_CACHE_DIR": "~/cache",
        "SYSID_CHECKPOINT_EVERY": "5",
        "SYSID_FABRIKANT": "alice",
        "SYSID_EMAIL": "alice@lab",
        "SYSID_AFFILIATION": "lab",
        "SYSID_GIT_COMMIT": "abc123",
        "SYSID_DEBUG": "yes",
    }
    settings = Settings.from_environ(env)
    assert (settings.host, settings.user, settings.password, settings.port) == (
        "db.example.org",
        "alice",
        "",
        3307,
    )
    assert settings.backend == "mysql" and not settings.uses_embedded
    assert settings.stores == {"models": {"protocol": "file", "location": "/m"}}
    assert settings.schema_prefix == "lab_" and settings.home == tmp_path
    assert settings.cache_dir == Path("~/cache").expanduser() and settings.checkpoint_every == 5
    assert (settings.fabrikant, settings.email, settings.affiliation) == ("alice", "alice@lab", "lab")
    assert settings.git_commit == "abc123" and settings.debug is True
    assert Settings.from_environ({"DJ_BACKEND": "postgres"}).backend == "postgresql"
    with pytest.raises(AttributeError):
        settings.port = 1  # frozen


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DJ_HOST": "h"}, "DJ_HOST is set but DJ_USER is not"),
        ({"DJ_PORT": "mysql"}, "DJ_PORT must be a port number"),
        ({"DJ_PORT": "70000"}, "DJ_PORT must be between"),
        ({"DJ_BACKEND": "oracle"}, "DJ_BACKEND must be 'mysql' or 'postgresql'"),
        ({"DJ_STORES": "{models"}, "DJ_STORES is not valid JSON"),
        ({"DJ_STORES": '["models"]'}, "DJ_STORES must be a JSON object"),
        ({"SYSID_CHECKPOINT_EVERY": "0"}, "SYSID_CHECKPOINT_EVERY must be a positive integer"),
        ({"SYSID_CHECKPOINT_EVERY": "often"}, "SYSID_CHECKPOINT_EVERY must be a positive integer"),
        ({"SYSID_SCHEMA_PREFIX": "Bad-"}, "SYSID_SCHEMA_PREFIX: schema prefix 'Bad-' must be lowercase"),
        ({"SYSID_DEBUG": "maybe"}, "SYSID_DEBUG must be"),
    ],
)
def test_malformed_values_are_refused_with_the_variable_named(env, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_environ(env)


def test_current_settings_reads_the_environment_now(monkeypatch):
    monkeypatch.setenv("SYSID_CHECKPOINT_EVERY", "3")
    assert current_settings().checkpoint_every == 3
    monkeypatch.setenv("SYSID_CHECKPOINT_EVERY", "4")
    assert current_settings().checkpoint_every == 4


def test_the_cache_folder_setting_is_the_one_the_data_cache_uses(monkeypatch, tmp_path):
    from pipeline.data.cache import default_cache_dir

    monkeypatch.setenv("SYSID_CACHE_DIR", str(tmp_path))
    assert current_settings().cache_dir == default_cache_dir() == tmp_path


def test_the_readme_table_lists_every_variable():
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "README's Settings table differs from schemas.settings.VARIABLES"
    assert "## Settings" in readme


def _sources():
    for package in ("pipeline", "schemas", "sysid"):
        yield from sorted((ROOT / package).rglob("*.py"))


def test_every_variable_named_in_the_code_and_containers_is_listed():
    listed = {v.name for v in VARIABLES}
    files = [*_sources(), ROOT / "Dockerfile", ROOT / "docker-compose.yml", ROOT / ".env.example"]
    files += sorted((ROOT / "docker").glob("*"))
    named = {name for path in files for name in NAME.findall(path.read_text())}
    assert named - listed == set()


def _environment_reads(path: Path) -> list[tuple[int, str]]:
    """``os.environ[...]``, ``os.environ.get(...)``, ``os.getenv(...)``, ``... in os.environ`` with a literal DJ_/SYSID_ name."""
    reads = []
    for node in ast.walk(ast.parse(path.read_text())):
        name = None
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            name = _literal(node.slice)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if (node.func.attr == "get" and _is_environ(node.func.value)) or node.func.attr == "getenv":
                name = _literal(node.args[0])
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            name = _literal(node.left)
        if name and NAME.fullmatch(name):
            reads.append((node.lineno, name))
    return reads


def _is_environ(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ"


def _literal(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def test_only_the_settings_module_reads_the_environment():
    allowed = {
        ROOT / "schemas" / "settings.py": None,
        ROOT / "pipeline" / "data" / "cache.py": {"SYSID_CACHE_DIR"},  # pipeline cannot import schemas
        ROOT / "pipeline" / "kernels" / "__init__.py": {"SYSID_CPU_KERNELS", "CC"},
    }
    scattered = []
    for path in _sources():
        for line, name in _environment_reads(path):
            if path in allowed and (allowed[path] is None or name in allowed[path]):
                continue
            scattered.append(f"{path.relative_to(ROOT)}:{line} reads {name}")
    assert not scattered, "read settings through schemas.settings.current_settings():\n" + "\n".join(
        scattered
    )
    # the reader itself finds reads
    assert [n for _, n in _environment_reads(ROOT / "pipeline" / "data" / "cache.py")] == ["SYSID_CACHE_DIR"]
