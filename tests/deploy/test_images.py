"""The gateway image holds what `python -m gateway` imports: its modules and its packages; every
Triton image an overlay (or Compose) runs installs what the python-backend tokenizer imports.

No Docker engine here, so the images are not built; these checks catch the usual breakage (a new
import in gateway/ that the image's requirements or COPY lines miss, a Triton image without
`tokenizers`). The gateway set was also run by hand from a fresh venv with only
gateway-requirements.txt: the gateway started in production.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from export.ensemble import TOKENIZER_RUNNER, build_tokenizer_config
from export.model_config import load_config
from tests.deploy.conftest import DEPLOY

ROOT = DEPLOY.parent
DOCKERFILE = DEPLOY / "docker" / "gateway.Dockerfile"
REQUIREMENTS = DEPLOY / "docker" / "gateway-requirements.txt"
# imported only inside functions the image does not reach: the Feast SDK reader (SQLite, local
# development). (No tokenizer: /v1/embeddings sends raw strings to Triton's <model>_text.)
LAZY_ONLY = {"feast", "features.store"}
PROVIDED_BY = {"starlette": "fastapi"}  # FastAPI's own dependency


def _requirements(path: Path = REQUIREMENTS) -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(Requirement(line).name): Requirement(line) for line in lines if line}


def _copied_modules() -> set[str]:
    """Dotted names of the modules the Dockerfile copies (gateway/ whole, listed features)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "gateway").rglob("*.py")
    }
    for line in text.splitlines():
        if line.startswith("COPY") and "/app/features/" in line:
            modules |= {f"features.{Path(f).stem}" for f in re.findall(r"features/\w+\.py", line)}
    return modules


def _imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def copied_modules(dockerfile: Path, package: str, sources: tuple[str, ...]) -> set[str]:
    """An image's modules: ``package`` whole, and the ``sources`` files its COPY lines name."""
    text = dockerfile.read_text().replace("\\\n", " ")
    modules = {f"{package}.{p.stem}" for p in (ROOT / package).glob("*.py")}
    pattern = r"\b(?:" + "|".join(sources) + r")/\w+\.py"
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            files = re.findall(pattern, line)
            modules |= {f.removesuffix(".py").replace("/", ".") for f in files}
    return modules


def unrequired_imports(
    modules: set[str],
    requirements: Path,
    first_party: tuple[str, ...],
    skip: frozenset[str] = frozenset(),
) -> list[str]:
    """The third-party imports of ``modules`` that no line of ``requirements`` installs
    (``skip``: names, or top-level packages, imported only where the image never goes)."""
    distributions = importlib.metadata.packages_distributions()
    required = set(_requirements(requirements))
    found = []
    for module in sorted(modules):
        for name in _imports(module):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in first_party or {name, top} & skip:
                continue
            dists = {canonicalize_name(d) for d in distributions.get(top, [top])}
            if not dists & required:
                found.append(f"{module} imports {name}: add it to {requirements.name}")
    return found


def test_the_image_copies_every_first_party_module_the_gateway_imports() -> None:
    copied = _copied_modules()
    needed = set()
    for module in copied:
        needed |= {m for m in _imports(module) if m.split(".")[0] in ("gateway", "features")}
    missing = {m for m in needed if m not in copied and f"{m}.__init__" not in copied}
    assert missing - {"features"} - LAZY_ONLY == set(), (
        f"add to {DOCKERFILE.name}: {sorted(missing)}"
    )


def test_the_image_requirements_cover_every_third_party_import() -> None:
    distributions = importlib.metadata.packages_distributions()
    required = set(_requirements())
    for module in sorted(_copied_modules()):
        for name in _imports(module):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in {"gateway", "features"} | LAZY_ONLY:
                continue
            top = PROVIDED_BY.get(top, top)
            dists = {canonicalize_name(d) for d in distributions.get(top, [top])}
            assert dists & required, f"{module} imports {name}: add it to {REQUIREMENTS.name}"


def test_the_image_requirements_agree_with_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ours = {
        Requirement(r).name.lower(): Requirement(r) for r in pyproject["project"]["dependencies"]
    }
    for name, requirement in _requirements().items():
        if name in ours:
            assert requirement.specifier == ours[name].specifier, name
        else:  # a transitive dependency in the dev environment: its version must fit
            version = importlib.metadata.version(name)
            assert requirement.specifier.contains(version), (name, version)


def test_the_image_runs_as_non_root_and_listens_on_all_interfaces() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "GATEWAY_HOST=0.0.0.0" in text
    assert '"-m", "gateway"' in text


# -- Triton images: the python-backend tokenizer's imports -------------------------------------
NVIDIA_TRITON = "nvcr.io/nvidia/tritonserver"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
TRITON_RUNTIME = ROOT / "requirements" / "triton-runtime.txt"
GPU_ENCODER = DEPLOY / "triton" / "model_repository_gpu" / "minilm" / "config.pbtxt"
REPOSITORIES = [ROOT / "model_repository", *sorted((DEPLOY / "triton").glob("model_repository*"))]
# what NVIDIA's image gives python-backend models without a pip install
TRITON_IMAGE_PROVIDES = {"numpy", "triton_python_backend_utils"}


def _triton_images() -> dict[str, tuple[Path | None, str | None]]:
    """Who runs Triton -> (the Dockerfile of its image, None for NVIDIA's unchanged; its tag).

    An overlay maps NVIDIA's image in `images:`; the last part of `newName` names the
    Dockerfile (`.../triton` -> deploy/docker/triton.Dockerfile, as deploy/README.md builds
    it). Compose builds its Triton from `build:`."""
    found: dict[str, tuple[Path | None, str | None]] = {}
    for kustomization in sorted((DEPLOY / "k8s" / "overlays").glob("*/kustomization.yaml")):
        images = yaml.safe_load(kustomization.read_text()).get("images", [])
        entry = next((i for i in images if i["name"] == NVIDIA_TRITON), {})
        name = entry.get("newName")
        dockerfile = DEPLOY / "docker" / f"{name.rsplit('/', 1)[-1]}.Dockerfile" if name else None
        found[f"overlay {kustomization.parent.name}"] = (dockerfile, entry.get("newTag"))
    build = yaml.safe_load(COMPOSE.read_text())["services"]["triton"].get("build")
    if isinstance(build, dict):
        dockerfile = (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve()
        found["compose"] = (dockerfile, None)
    else:
        found["compose"] = (None, None)
    return found


def _python_backend_tokenizers() -> list[str]:
    """The python-backend tokenizer models Triton will load: the one `tritonstack export`
    writes beside the gpu repository's encoder, and any tracked tokenizer config."""
    encoder = load_config(GPU_ENCODER)
    max_length = int(encoder.parameters["max_sequence_length"].string_value)
    exported = build_tokenizer_config(encoder, max_length=max_length)
    found = [f"export: {exported.name}"] if exported.backend == "python" else []
    for repository in REPOSITORIES:
        for path in sorted(repository.glob("*/config.pbtxt")):
            config = load_config(path)
            if config.backend == "python" and "tokenizer_filename" in config.parameters:
                found.append(str(path.relative_to(ROOT)))
    return found


def _tokenizer_requirements() -> dict[str, Requirement]:
    """What the tokenizer's model.py imports beyond NVIDIA's image, pinned as the local runtime
    (requirements/triton-runtime.txt, where the tests run it)."""
    pins = _requirements(TRITON_RUNTIME)
    modules = _imports(".".join(TOKENIZER_RUNNER.relative_to(ROOT).with_suffix("").parts))
    needed = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names)
    needed -= TRITON_IMAGE_PROVIDES
    missing = {m for m in needed if canonicalize_name(m) not in pins}
    assert not missing, f"{TOKENIZER_RUNNER.name} imports {missing}: pin it in {TRITON_RUNTIME}"
    return {m: pins[canonicalize_name(m)] for m in needed}


def _pip_installs(dockerfile: str) -> dict[str, Requirement]:
    """The requirements the RUN lines' `pip install` commands name (options skipped)."""
    found = {}
    for line in dockerfile.replace("\\\n", " ").splitlines():
        if not line.startswith("RUN"):
            continue
        for command in re.split(r"&&|;|\|\|", line):
            if "pip install" not in command:
                continue
            args = iter(shlex.split(command.split("pip install", 1)[1]))
            for arg in args:
                if arg in ("-r", "-c", "--requirement", "--constraint", "-i", "--index-url"):
                    next(args, None)
                elif not arg.startswith("-"):
                    requirement = Requirement(arg)
                    found[canonicalize_name(requirement.name)] = requirement
    return found


def triton_image_problems(
    dockerfile: str | None, tag: str | None, needed: dict[str, Requirement]
) -> list[str]:
    """Why a Triton image cannot load the tokenizer model; [] when it can."""
    if dockerfile is None:
        return [f"runs NVIDIA's image unchanged, which lacks {sorted(needed)}"]
    problems = []
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M)
    if base is None or not base.group(1).startswith(f"{NVIDIA_TRITON}:"):
        problems.append(f"is not built FROM {NVIDIA_TRITON}")
    elif tag is not None and base.group(1) != f"{NVIDIA_TRITON}:{tag}":
        problems.append(f"is built FROM {base.group(1)} but tagged {tag}")
    installed = _pip_installs(dockerfile)
    for module, pin in sorted(needed.items()):
        got = installed.get(canonicalize_name(pin.name))
        if got is None:
            problems.append(f"does not pip install {pin} (the tokenizer model imports {module})")
        elif got.specifier != pin.specifier:
            problems.append(f"installs {got}; the local runtime (where tests run) has {pin}")
    return problems


@pytest.mark.parametrize("who", sorted(_triton_images()))
def test_every_triton_image_installs_what_the_tokenizer_model_imports(who: str) -> None:
    tokenizers = _python_backend_tokenizers()
    assert tokenizers, "no python-backend tokenizer model: this check has nothing to guard"
    needed = _tokenizer_requirements()
    assert "tokenizers" in needed
    dockerfile, tag = _triton_images()[who]
    assert dockerfile is None or dockerfile.is_file(), f"{who}: {dockerfile} does not exist"
    text = dockerfile.read_text() if dockerfile else None
    assert triton_image_problems(text, tag, needed) == [], f"{who} ({tokenizers})"


def test_every_overlay_and_compose_are_checked() -> None:
    assert {"overlay gpu", "overlay cpu", "compose"} <= _triton_images().keys()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(' "tokenizers==0.23.3"', "", "does not pip install tokenizers", id="missing"),
        pytest.param("tokenizers==0.23.3", "tokenizers>=0.20", "installs tokenizers>=0.20",
                     id="other-version"),
        pytest.param("RUN pip install", "RUN echo pip-install", "does not pip install",
                     id="not-installed"),
        pytest.param("tritonserver:24.10-py3", "tritonserver:24.09-py3", "but tagged 24.10-py3",
                     id="tag"),
    ],
)  # fmt: skip
def test_the_triton_image_check_fails_on_a_broken_dockerfile(
    old: str, new: str, expected: str
) -> None:
    needed = _tokenizer_requirements()
    for name in ("triton.Dockerfile", "triton-cpu.Dockerfile"):
        text = (DEPLOY / "docker" / name).read_text()
        assert old in text, (name, old)
        problems = triton_image_problems(text.replace(old, new), "24.10-py3", needed)
        assert any(expected in p for p in problems), (name, problems)


def test_the_triton_image_check_refuses_nvidias_image_unchanged() -> None:
    assert triton_image_problems(None, None, _tokenizer_requirements()) == [
        "runs NVIDIA's image unchanged, which lacks ['tokenizers']"
    ]
