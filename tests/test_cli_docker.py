"""docker-compose.yml, Dockerfile and .env.example: structure checks (no Docker engine needed).

`docker compose config` validates the file when the compose plugin is installed; these checks run
everywhere and pin what the deployment relies on: the database settings, the healthcheck gate,
GPU reservations, volumes, and that no password is written into any committed file.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET_KEYS = re.compile(r"(PASS|PASSWORD|TOKEN|SECRET)", re.I)


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_db_service_is_mysql_84_configured_for_datajoint(compose):
    db = compose["services"]["db"]
    assert db["image"] == "mysql:8.4"
    flags = " ".join(db["command"])
    for flag in (
        "--collation-server=utf8mb4_bin",
        "--character-set-server=utf8mb4",
        "--max-allowed-packet=1G",
        "--wait-timeout=",
    ):
        assert flag in flags
    wait_timeout = int(re.search(r"--wait-timeout=(\d+)", flags)[1])
    assert wait_timeout >= 24 * 3600  # workers idle on their connection while training
    assert "mysqladmin ping" in " ".join(db["healthcheck"]["test"])
    assert any(v.startswith("db-data:") for v in db["volumes"]) and "db-data" in compose["volumes"]


def test_worker_waits_for_a_healthy_db_and_uses_every_gpu(compose):
    worker = compose["services"]["worker"]
    assert worker["depends_on"]["db"]["condition"] == "service_healthy"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "container_name" not in worker  # a fixed name would prevent --scale worker=N
    # one supervised worker process per GPU the container sees
    command = worker["command"]
    assert command[:3] == ["worker", "--gpus", "all"]
    assert command[command.index("--per-gpu") + 1] == "${SYSID_WORKERS_PER_GPU:-1}"
    env = worker["environment"]
    assert env["DJ_HOST"] == "db"
    assert '"models"' in env["DJ_STORES"]
    store = yaml.safe_load(env["DJ_STORES"])["models"]["location"]
    assert any(v.startswith("model-store:") and v.endswith(store) for v in worker["volumes"])
    # SIGTERM lets the training checkpoint: Docker must wait for it before SIGKILL
    assert worker["stop_grace_period"]
    assert worker["build"]["target"] == "worker"


def test_notebook_is_optional(compose):
    assert compose["services"]["notebook"]["profiles"] == ["notebook"]


def _environment_values(compose):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            yield name, key, str(value)


def test_no_password_is_written_in_the_compose_file(compose):
    secrets = [(s, k, v) for s, k, v in _environment_values(compose) if SECRET_KEYS.search(k)]
    assert secrets, "expected password settings taken from .env"
    for service, key, value in secrets:
        assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", value), (
            f"{service}.{key} must come from .env, got {value!r}"
        )


def test_env_example_has_placeholders_only():
    text = (ROOT / ".env.example").read_text()
    values = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    for key in ("MYSQL_ROOT_PASSWORD", "DJ_USER", "DJ_PASS"):
        assert key in values
    for key, value in values.items():
        if SECRET_KEYS.search(key):
            assert value.startswith("<") and value.endswith(">"), f"{key} must be a placeholder"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_dockerfile_builds_the_package_and_runs_the_worker():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM .* AS worker$", text, re.M) and re.search(
        r"^FROM worker AS notebook$", text, re.M
    )
    assert "pip install" in text and "COPY sysid" in text
    assert 'ENTRYPOINT ["sysid-entrypoint"]' in text
    assert (ROOT / "docker" / "entrypoint.sh").read_text().rstrip().endswith('exec sysid "$@"')


def _compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or the standalone `docker-compose`; None when neither runs."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_validates(tmp_path):
    command = _compose_command()
    if command is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    env_file = tmp_path / ".env"
    env_file.write_text("MYSQL_ROOT_PASSWORD=x\nDJ_USER=u\nDJ_PASS=p\n")
    # variables in the environment beat the env file: drop the test run's own DJ_* settings
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJ_", "MYSQL_", "SYSID_"))}
    result = subprocess.run(
        [*command, "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr


def test_cpu_override_drops_the_gpu_reservation():
    class Loader(yaml.SafeLoader):
        pass

    # Compose's `!reset` tag (Compose >= 2.18) removes the base file's value when merging
    Loader.add_constructor("!reset", lambda loader, node: ("!reset", loader.construct_mapping(node)))
    override = yaml.load((ROOT / "docker-compose.cpu.yml").read_text(), Loader=Loader)
    worker = override["services"]["worker"]
    assert worker["deploy"] == ("!reset", {})
    assert worker["command"][:3] == ["worker", "--device", "cpu"] and "--gpus" not in worker["command"]


def test_docker_compose_cpu_override_validates(tmp_path):
    command = _compose_command()
    if command != ["docker", "compose"]:
        pytest.skip("the `!reset` merge tag needs the docker compose plugin (Compose >= 2.18)")
    env_file = tmp_path / ".env"
    env_file.write_text("MYSQL_ROOT_PASSWORD=x\nDJ_USER=u\nDJ_PASS=p\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJ_", "MYSQL_", "SYSID_"))}
    files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "docker-compose.cpu.yml")]
    result = subprocess.run(
        [*command, "--env-file", str(env_file), *files, "config"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    merged = yaml.safe_load(result.stdout)["services"]["worker"]
    assert "deploy" not in merged or not merged["deploy"].get("resources")
