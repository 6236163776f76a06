"""The batch scoring Job (deploy/k8s/jobs/batch) and its image, checked offline: the Indexed
Job renders and validates beside the overlay whose Triton Service it calls, broken copies fail
the same checks, and the image holds what `python -m tritonstack.batch_cli` imports."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from batch.settings import BatchSettings
from deploy.validate import __main__ as validate
from deploy.validate import manifests
from tests.deploy.conftest import DEPLOY
from tests.deploy.test_images import _imports, _requirements, copied_modules, unrequired_imports

ROOT = DEPLOY.parent
JOB = DEPLOY / "k8s" / "jobs" / "batch"
DOCKERFILE = DEPLOY / "docker" / "batch.Dockerfile"
REQUIREMENTS = DEPLOY / "docker" / "batch-requirements.txt"
# imported only inside functions the image's runs do not reach: Feast (feature-backed runs)
# and the local stack (used when no Triton URL is given)
LAZY_ONLY = {"feast", "features.store", "deploy.local", "deploy.local.settings"}
Edit = Callable[[str, str, str], Path]


def _gpu_overlay() -> list[manifests.Manifest]:
    return manifests.render(DEPLOY / "k8s" / "overlays" / "gpu")


def test_the_job_validates_beside_the_overlay_it_scores_against(kubectl: str) -> None:
    assert validate.job_problems(JOB) == []
    assert JOB in validate.JOBS  # `python -m deploy.validate` checks it with the overlays


def test_the_job_is_one_shard_range_per_completion_index(
    kubectl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = {manifests.name_of(o): o for o in manifests.render(JOB)}
    job = objects["Job/batch-score"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] <= spec["completions"]
    assert spec["podReplacementPolicy"] == "Failed"  # never two pods on one shard range
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/tritonstack/batch:0.1.0"
    assert {a.split("=")[0] for a in container["args"]} >= {"--model", "--input", "--output"}
    config = next(o for n, o in objects.items() if n.startswith("ConfigMap/batch-config"))
    env = dict(config["data"]) | {e["name"]: e["value"] for e in container["env"]}
    assert env["BATCH_WORKERS"] == str(spec["completions"])
    assert set(env) <= {f"BATCH_{n.upper()}" for n in BatchSettings.model_fields}
    # what each pod gets: Kubernetes sets JOB_COMPLETION_INDEX; the settings accept every index
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for index in range(spec["completions"]):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        settings = BatchSettings()
        assert (settings.worker_index, settings.workers) == (index, spec["completions"])
    assert settings.triton_url == "dns:///triton-headless:8001"
    assert settings.shared_memory == "none"


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        pytest.param("k8s/jobs/batch/batch-job.yaml", '      value: "4"', '      value: "3"',
                     "BATCH_WORKERS=3 but completions=4", id="workers"),
        pytest.param("k8s/jobs/batch/batch.env", "triton-headless:8001", "trition:8001",
                     "names no Service 'trition'", id="service"),
        pytest.param("k8s/jobs/batch/batch.env", "triton-headless:8001",
                     "triton-headless:8000", "has no port 8000", id="port"),
        pytest.param("k8s/jobs/batch/batch-job.yaml", "restartPolicy: Never",
                     "restartPolicy: OnFailure", "needs restartPolicy Never", id="restart"),
        pytest.param("k8s/jobs/batch/batch-job.yaml", "  backoffLimitPerIndex: 3",
                     "  backoffLimitPerIndx: 3", "backoffLimitPerIndx", id="schema"),
        pytest.param("k8s/jobs/batch/kustomization.yaml", "newTag: 0.1.0", "newTag: latest",
                     "has no pinned tag", id="image"),
        pytest.param("k8s/jobs/batch/kustomization.yaml", "\n  - networkpolicy.yaml", "",
                     "Job/batch-score: no NetworkPolicy selects its pods", id="own-policy"),
        pytest.param("k8s/jobs/batch/batch-job.yaml", "readOnlyRootFilesystem: true",
                     "readOnlyRootFilesystem: false", "readOnlyRootFilesystem must be true",
                     id="read-only-root"),
    ],
)  # fmt: skip
def test_checks_fail_on_a_broken_job(
    kubectl: str, deploy_copy: Edit, file: str, old: str, new: str, expected: str
) -> None:
    root = deploy_copy(file, old, new)
    problems = manifests.check_kustomization(root / "k8s" / "jobs" / "batch",
                                             context=_gpu_overlay())  # fmt: skip
    assert any(expected in p for p in problems), problems


def test_the_job_fails_where_tritons_policy_does_not_let_it_in(
    kubectl: str, deploy_copy: Edit
) -> None:
    """Under the overlay's default deny, a Job whose pods Triton's NetworkPolicy does not admit
    could not score a row: the overlay is rendered from the broken copy."""
    root = deploy_copy(
        "k8s/base/networkpolicies.yaml", "app.kubernetes.io/component: batch", "app: nobody"
    )
    context = manifests.render(root / "k8s" / "overlays" / "gpu")
    problems = manifests.check_kustomization(root / "k8s" / "jobs" / "batch", context=context)
    assert any("no NetworkPolicy of Triton's pods lets this Job's pods in" in p for p in problems)


# -- the batch image ----------------------------------------------------------------------------
def _copied_modules() -> set[str]:
    return copied_modules(DOCKERFILE, "batch", ("tritonstack", "features", "export"))


def test_the_image_copies_every_first_party_module_the_cli_imports() -> None:
    copied = _copied_modules()
    assert {"tritonstack.batch_cli", "batch.runner", "features.schema"} <= copied
    ours = ("batch", "features", "tritonstack", "deploy", "gateway", "export")
    needed = set()
    for module in copied:
        needed |= {m for m in _imports(module) if m.split(".")[0] in ours}
    missing = {m for m in needed if m not in copied and f"{m}.__init__" not in copied}
    assert missing - {"batch", "features", "tritonstack"} - LAZY_ONLY == set(), (
        f"add to {DOCKERFILE.name}: {sorted(missing)}"
    )


def test_the_image_requirements_cover_every_third_party_import() -> None:
    first_party = ("batch", "features", "tritonstack", "deploy", "export")
    found = unrequired_imports(_copied_modules(), REQUIREMENTS, first_party, frozenset(LAZY_ONLY))
    assert found == []


def test_the_image_requirements_agree_with_pyproject() -> None:
    import tomllib

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ours = {Requirement(r).name.lower(): Requirement(r)
            for r in pyproject["project"]["dependencies"]}  # fmt: skip
    for name, requirement in _requirements(REQUIREMENTS).items():
        if name in ours:
            assert requirement.specifier == ours[name].specifier, name


def test_the_image_runs_the_cli_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert '"-m", "tritonstack.batch_cli"' in text
