"""The deployment files, checked without a Docker engine: docker/docker-compose.yml, the two
Dockerfiles and .env.example.

The compose file is interpolated with .env.example the way Compose does it, then validated against
the Compose Specification's JSON schema (the copy check-jsonschema ships; skipped when that package
is missing) and checked for what this project needs: Label Studio 1.23.2 configured as DESIGN.md
section 4 says, backend and workers agreeing on the model and the queue, a GPU per worker, and
Dockerfiles that install the project the way its own docs and scripts do.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


# -- Compose interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, nesting, $$) --


class InterpolationError(ValueError):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            value, i = _braced(text, i + 2, env)
            out.append(value)
        elif text[i] == "$" and re.match(r"[A-Za-z_]", text[i + 1 : i + 2]):
            name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1 :]).group(0)
            out.append(env.get(name, ""))
            i += 1 + len(name)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _braced(text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
    """Parse after "${" up to the matching "}"; return the value and the index after it."""
    name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
    if not name:
        raise InterpolationError(f"bad variable at {text[i - 2 :]!r}")
    i += len(name.group(0))
    name = name.group(0)
    operator = re.match(r":-|-|:\?|\?|:\+|\+", text[i:])
    if text[i : i + 1] == "}":
        return env.get(name, ""), i + 1
    if not operator:
        raise InterpolationError(f"bad modifier after ${{{name} in {text!r}")
    i += len(operator.group(0))
    depth, start = 1, i
    while depth:
        if i >= len(text):
            raise InterpolationError(f"unclosed ${{{name} in {text!r}")
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        depth += {"}": -1}.get(text[i], 0)
        i += 1
    word = interpolate(text[start : i - 1], env)
    value, op = env.get(name), operator.group(0)
    unset = value is None or (op.startswith(":") and value == "")
    if op in (":-", "-"):
        return (word if unset else value), i
    if op in (":?", "?"):
        if unset:
            raise InterpolationError(f"{name}: {word}")
        return value, i
    return ("" if unset else word), i  # :+ and +


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(n, env) for n in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def referenced_variables(text: str) -> set[str]:
    text = text.replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)) | set(
        re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text)
    )


def test_interpolation_follows_compose_rules() -> None:
    env = {"A": "a", "EMPTY": ""}
    assert interpolate("${A}-${B:-b}-${EMPTY:-e}-${EMPTY-e}-$$A-$A", env) == "a-b-e--$A-a"
    assert interpolate("${B:-x${A}y}", env) == "xay"
    assert interpolate("${A:+set}${B:+set}", env) == "set"
    with pytest.raises(InterpolationError, match="needed"):
        interpolate("${B:?needed}", env)


# -- loading -------------------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    values = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f".env.example:{number}: {line}"
        assert name not in values, f".env.example:{number}: {name} twice"
        values[name] = value
    return values


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The compose file as `docker compose --env-file .env.example config` would see it."""
    return interpolate_tree(raw, env_example())


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# -- the compose file ----------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    pytest.importorskip("check_jsonschema")
    jsonschema = pytest.importorskip("jsonschema")
    from importlib.resources import files

    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_every_variable_is_in_env_example_and_back() -> None:
    used = referenced_variables(COMPOSE.read_text(encoding="utf-8"))
    documented = set(env_example())
    assert used - documented == set(), "used by the compose file, missing in .env.example"
    assert documented - used == set(), "in .env.example, unused by the compose file"


def test_required_variables_are_refused_when_missing(raw: dict[str, Any]) -> None:
    env = env_example()
    del env["LABEL_STUDIO_API_KEY"]
    with pytest.raises(InterpolationError, match="LABEL_STUDIO_API_KEY"):
        interpolate_tree(raw, env)


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"label-studio", "redis", "backend", "worker"} <= set(services)
    for name, service in services.items():
        assert ("image" in service) or ("build" in service), name
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, (name, dependency)
            condition = service["depends_on"][dependency].get("condition")
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_label_studio_service_is_configured_as_design_section_4_says(
    compose: dict[str, Any],
) -> None:
    ls = compose["services"]["label-studio"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    env = service_env(ls)
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert len(env["LABEL_STUDIO_USER_TOKEN"]) > 5
    assert env["LABEL_STUDIO_USERNAME"] and env["LABEL_STUDIO_PASSWORD"]
    # Both, or a backend on the compose network is refused (or connected without its webhook).
    assert env["ML_BLOCK_LOCAL_IP"] == "false"
    assert env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    targets = {v.split(":")[1] for v in ls["volumes"]}
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] in targets
    # The image keeps its database and uploads in LABEL_STUDIO_BASE_DATA_DIR=/label-studio/data.
    assert "/label-studio/data" in targets
    assert any(p.endswith(":8080") for p in ls["ports"])
    assert int(env["ML_TIMEOUT_PREDICT"]) >= 100


def test_backend_and_workers_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    backend, worker = service_env(services["backend"]), service_env(services["worker"])
    # The same queue (with the password Redis requires), the same model, the same token.
    assert backend["REDIS_URL"] == worker["REDIS_URL"]
    password = env_example()["REDIS_PASSWORD"]
    assert backend["REDIS_URL"] == f"redis://:{password}@redis:6379/0"
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--requirepass") + 1] == password
    for name in ("VARCO_MODEL", "VARCO_MODEL_VERSION", "VARCO_BATCH_SIZE", "LABEL_STUDIO_API_KEY"):
        assert backend[name] == worker[name], name
    ls_token = service_env(services["label-studio"])["LABEL_STUDIO_USER_TOKEN"]
    assert backend["LABEL_STUDIO_API_KEY"] == ls_token
    # Images are fetched from Label Studio by its service name and container port.
    assert backend["LABEL_STUDIO_URL"] == worker["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert "REDIS_URL" in backend, "the backend must run in queue mode, not embedded"
    assert backend["PORT"] == "9090"
    assert any(p.endswith(":9090") for p in services["backend"]["ports"])


def test_default_model_is_the_projects_default(raw: dict[str, Any]) -> None:
    from varco_labeler.engine.profiles import DEFAULT_MODEL

    # Only the variables the compose file requires: everything else takes its default.
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text(encoding="utf-8")))
    bare = interpolate_tree(raw, {name: "x" * 8 for name in required})
    for service in ("backend", "worker"):
        assert bare["services"][service]["environment"]["VARCO_MODEL"] == DEFAULT_MODEL
    assert env_example()["VARCO_MODEL"] == DEFAULT_MODEL


def test_environment_names_are_ones_our_programs_read(compose: dict[str, Any]) -> None:
    from varco_labeler.settings import _ENV_NAMES

    known = set(_ENV_NAMES.values()) | {"HF_HOME", "HF_TOKEN"}
    for name in ("backend", "worker"):
        unknown = set(service_env(compose["services"][name])) - known
        assert not unknown, f"{name}: {unknown} are read by nothing"


def test_worker_reserves_one_gpu(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["device_ids"] == [env_example()["WORKER_GPU"]]
    assert "backend" not in worker.get("depends_on", {}), "workers must start without the backend"
    assert "deploy" not in compose["services"]["backend"], "the backend needs no GPU"


def test_monitoring_is_off_by_default_and_scrapes_backend_and_workers(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in ("prometheus", "rq-dashboard"):
        assert services[name]["profiles"] == ["monitoring"], name
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    prometheus = services["prometheus"]
    # The file --config.file names is docker/prometheus.yml, mounted.
    (config_path,) = [a.split("=", 1)[1] for a in prometheus["command"] if "--config.file" in a]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert mounted[config_path] == "./prometheus.yml"
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    backend = jobs["varco-backend"]
    assert backend["static_configs"][0]["targets"] == [
        f"backend:{service_env(services['backend'])['PORT']}"
    ]
    # /metrics sits behind the backend's basic auth: its user and password, as secret files.
    secrets = {name: compose["secrets"][name]["environment"] for name in prometheus["secrets"]}
    auth = backend["basic_auth"]
    files = {auth["username_file"]: "BASIC_AUTH_USER", auth["password_file"]: "BASIC_AUTH_PASS"}
    assert {f"/run/secrets/{name}": env for name, env in secrets.items()} == files
    assert set(files.values()) <= set(service_env(services["backend"]))

    (workers,) = jobs["varco-worker"]["dns_sd_configs"]
    assert workers["names"] == ["worker"]
    assert str(workers["port"]) == service_env(services["worker"])["VARCO_METRICS_PORT"]

    dashboard = service_env(services["rq-dashboard"])
    assert dashboard["RQ_DASHBOARD_REDIS_URL"] == service_env(services["backend"])["REDIS_URL"]


# -- the Dockerfiles -----------------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    joined, current = [], ""
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        part = stripped.removesuffix("\\").strip()
        current = f"{current} {part}".strip()
        if not stripped.endswith("\\"):
            joined.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The arguments of every `pip install` in the RUN instructions."""
    found = []
    for name, args in instructions(dockerfile):
        if name != "RUN":
            continue
        lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, "&&"]:
            if token in ("&&", ";", "||"):
                if command[:2] == ["pip", "install"]:
                    found.append(command[2:])
                command = []
            else:
                command.append(token)
    return found


def build_of(compose: dict[str, Any], service: str) -> Path:
    build = compose["services"][service]["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == REPO, "build from the repository root"
    dockerfile = context / build["dockerfile"]
    assert dockerfile.is_file(), dockerfile
    return dockerfile


def _copied_sources(dockerfile: Path) -> list[str]:
    sources = []
    for name, args in instructions(dockerfile):
        if name == "COPY" and "--from" not in args:
            sources += shlex.split(args)[:-1]
    return sources


@pytest.mark.parametrize("service", ["backend", "worker"])
def test_dockerfile_copies_what_pip_install_needs(compose: dict[str, Any], service: str) -> None:
    dockerfile = build_of(compose, service)
    sources = _copied_sources(dockerfile)
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
    # Every package pyproject installs, and the files the build reads (readme).
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        assert pattern.rstrip("*") in sources, f"{dockerfile.name} does not copy {pattern}"
    assert "pyproject.toml" in sources and PYPROJECT["project"]["readme"] in sources
    # BuildKit's per-Dockerfile ignore file lets those paths through and keeps .venv out.
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text(encoding="utf-8")
    for source in sources:
        assert f"!{source.rstrip('/')}" in ignore.replace("/\n", "\n"), source


def test_backend_image_is_the_light_install(compose: dict[str, Any]) -> None:
    dockerfile = build_of(compose, "backend")
    installs = pip_installs(dockerfile)
    assert ["."] in installs, installs  # README: `pip install .` is the light install
    text = dockerfile.read_text(encoding="utf-8")
    assert "[worker]" not in text and "torch==" not in text
    assert not any(
        d.split("[")[0].startswith("torch") for d in PYPROJECT["project"]["dependencies"]
    )
    cmd = dict(instructions(dockerfile))["CMD"]
    assert json.loads(cmd) == ["varco-labeler", "serve"]
    # Optional extras (EXTRAS build arg) are real extras, and never the torch one.
    extras = compose["services"]["backend"]["build"].get("args", {}).get("EXTRAS", "")
    for extra in filter(None, extras.split(",")):
        assert extra in PYPROJECT["project"]["optional-dependencies"], extra
        assert extra not in ("worker", "train"), "the backend image must stay torch-free"


def test_worker_image_installs_torch_and_the_worker_extra(compose: dict[str, Any]) -> None:
    dockerfile = build_of(compose, "worker")
    steps = instructions(dockerfile)
    assert re.match(r"(\$\{CUDA_IMAGE\}|nvidia/cuda:)", dict(steps)["FROM"])
    cuda_arg = next(a for n, a in steps if n == "ARG" and a.startswith("CUDA_IMAGE="))
    assert "nvidia/cuda:" in cuda_arg and "runtime" in cuda_arg
    assert [".[worker]"] in pip_installs(dockerfile)
    assert "worker" in PYPROJECT["project"]["optional-dependencies"]
    # The same torch pins scripts/setup.sh installs.
    setup = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    setup_spec = re.search(r"TORCH_SPEC=\$\{TORCH_SPEC:-([^}]*)\}", setup).group(1)
    torch_arg = next(a for n, a in steps if n == "ARG" and a.startswith("TORCH_SPEC="))
    assert shlex.split(torch_arg.split("=", 1)[1]) == [setup_spec]
    assert json.loads(dict(steps)["CMD"]) == ["varco-worker"]


def test_commands_in_images_are_the_projects_entry_points() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    for dockerfile in (DOCKER / "backend.Dockerfile", DOCKER / "worker.Dockerfile"):
        command = json.loads(dict(instructions(dockerfile))["CMD"])[0]
        assert command in scripts, f"{dockerfile.name}: {command} is not in [project.scripts]"
