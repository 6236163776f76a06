"""The rollout Job (deploy/k8s/jobs/rollout), the Redis ACL it and the gateways need, and its
image, checked offline: the Job renders and validates beside the overlay whose Triton and Redis
it changes, its settings are the controller's, broken copies fail, and the image holds what
`python -m rollout` imports."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.validate import __main__ as validate
from deploy.validate import manifests
from rollout.settings import RolloutSettings
from tests.deploy.conftest import DEPLOY
from tests.deploy.test_images import _imports, copied_modules, unrequired_imports

ROOT = DEPLOY.parent
JOB = DEPLOY / "k8s" / "jobs" / "rollout"
DOCKERFILE = DEPLOY / "docker" / "rollout.Dockerfile"
REQUIREMENTS = DEPLOY / "docker" / "rollout-requirements.txt"
Edit = Callable[[str, str, str], Path]


def _gpu_overlay() -> list[manifests.Manifest]:
    return manifests.render(DEPLOY / "k8s" / "overlays" / "gpu")


def test_the_job_validates_beside_the_overlay_it_rolls_out_on(kubectl: str) -> None:
    assert validate.job_problems(JOB) == []
    assert JOB in validate.JOBS


def test_the_job_runs_the_controller_with_its_settings(
    kubectl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = {manifests.name_of(o): o for o in manifests.render(JOB)}
    job = objects["Job/rollout-minilm"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "start" and "--model=minilm" in container["args"]
    rules = job["spec"]["podFailurePolicy"]["rules"]  # rolled back or refused: never retried
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [1, 2]
    assert pod["restartPolicy"] == "Never"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"]
    config = next(o for n, o in objects.items() if n.startswith("ConfigMap/rollout-config"))
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert secrets["ROLLOUT_REDIS_PASSWORD"] == {"name": "redis-auth", "key": "rollout-password"}
    assert set(config["data"]) | set(secrets) <= {
        f"ROLLOUT_{n.upper()}" for n in RolloutSettings.model_fields
    }
    for name, value in config["data"].items():
        monkeypatch.setenv(name, value)
    settings = RolloutSettings()
    assert settings.triton_http_urls == ["triton-headless:8000"]
    assert settings.repository == Path("/models") and not settings.repository_writes
    assert settings.redis_username == "rollout"


def test_redis_lets_the_gateway_and_the_controller_run_what_they_run(kubectl: str) -> None:
    """The ACL users' command lists hold what the route table and a rollout need."""
    redis = next(o for o in _gpu_overlay() if manifests.name_of(o) == "Deployment/redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    users: dict[str, set[str]] = {}
    current = None
    for before, arg in itertools.pairwise(args):
        if before == "--user":
            current = users.setdefault(arg, set())
        elif current is not None and arg.startswith("+"):
            current.add(arg[1:])
    assert {"get", "hset", "hincrby", "hincrbyfloat", "expire"} <= users["gateway"]
    assert {"get", "set", "getdel", "hgetall", "watch", "multi", "exec", "lpush"} <= users[
        "rollout"
    ]
    assert "keys" not in users["gateway"] and "flushall" not in users["rollout"]


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        pytest.param(
            "k8s/jobs/rollout/kustomization.yaml",
            "\n  - networkpolicy.yaml",
            "",
            "Job/rollout-minilm: no NetworkPolicy selects its pods",
            id="own-policy",
        ),
        pytest.param(
            "k8s/jobs/rollout/kustomization.yaml",
            "newTag: 0.1.0",
            "newTag: latest",
            "has no pinned tag",
            id="image",
        ),
        pytest.param(
            "k8s/jobs/rollout/rollout-job.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            "readOnlyRootFilesystem must be true",
            id="read-only-root",
        ),
        pytest.param(
            "k8s/jobs/rollout/rollout-job.yaml",
            "key: rollout-password",
            "key: rollout-pasword",
            "",
            id="control-any-edit",
        ),
    ],
)
def test_checks_fail_on_a_broken_job(
    kubectl: str, deploy_copy: Edit, file: str, old: str, new: str, expected: str
) -> None:
    root = deploy_copy(file, old, new)
    problems = manifests.check_kustomization(
        root / "k8s" / "jobs" / "rollout", context=_gpu_overlay()
    )
    if expected:
        assert any(expected in p for p in problems), problems
    else:  # a harmless edit (a Secret key name is the operator's) stays valid
        assert problems == []


def test_the_job_fails_where_tritons_policy_does_not_let_it_in(
    kubectl: str, deploy_copy: Edit
) -> None:
    root = deploy_copy(
        "k8s/base/networkpolicies.yaml", "app.kubernetes.io/component: rollout", "app: nobody"
    )
    context = manifests.render(root / "k8s" / "overlays" / "gpu")
    problems = manifests.check_kustomization(root / "k8s" / "jobs" / "rollout", context=context)
    assert any("no NetworkPolicy of Triton's pods lets this Job's pods in" in p for p in problems)


# -- the rollout image --------------------------------------------------------------------------
def _copied_modules() -> set[str]:
    return copied_modules(DOCKERFILE, "rollout", ("gateway", "export"))


def test_the_image_copies_every_first_party_module_the_controller_imports() -> None:
    copied = _copied_modules()
    assert {"rollout.__main__", "gateway.traffic", "export.reader"} <= copied
    ours = ("rollout", "gateway", "export", "features", "deploy", "tritonstack", "batch")
    needed: set[str] = set()
    todo = ["rollout.__main__"]
    while todo:  # what `python -m rollout` reaches, transitively
        module = todo.pop()
        for name in _imports(module):
            if name.split(".")[0] in ours and name not in needed:
                needed.add(name)
                if (ROOT / (name.replace(".", "/") + ".py")).is_file():
                    todo.append(name)
    missing = {m for m in needed if m not in copied and f"{m}.__init__" not in copied}
    assert missing - {"rollout", "gateway", "export"} - {"export.spec"} == set(), (
        f"add to {DOCKERFILE.name}: {sorted(missing)}"
    )


def test_the_image_requirements_cover_every_third_party_import() -> None:
    first_party = ("rollout", "gateway", "export")
    skip = frozenset({"export.spec"})  # annotations only (TYPE_CHECKING)
    assert unrequired_imports(_copied_modules(), REQUIREMENTS, first_party, skip) == []


def test_the_image_runs_the_controller_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert '"-m", "rollout"' in text
