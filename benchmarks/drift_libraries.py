"""Which drift library: Evidently, alibi-detect, NannyML and whylogs measured side by side.

For each candidate, in one run:

* compatibility with the gateway/export environment: ``pip install --dry-run --report`` against
  this interpreter's environment (Feast pins numpy>=2 and prometheus_client<0.25 there): what it
  would add, and what it would change (a downgrade of numpy is a veto);
* its footprint: a fresh virtual environment with only the library (pandas held at this
  environment's version), its size and number of distributions, and the size of what it would
  add here;
* import time (median of 3 fresh processes) and the run time of the same tasks: per-feature
  drift of 4 columns (5,000 reference rows, 1,000 current, ``conv_rate`` shifted by 0.15) and,
  where the library has one, a drift measure of 384-dimensional embeddings (1,000 vs 1,000).

    python -m benchmarks.drift_libraries --venvs /tmp/drift-venvs --save benchmarks/results

It installs packages (from the registry pip is configured with) into ``--venvs``; it never
touches this environment.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

CANDIDATES = {
    "evidently": "evidently==0.7.23",
    "alibi-detect": "alibi-detect==0.13.0",
    "nannyml": "nannyml==0.13.1",
    "whylogs": "whylogs==1.6.4",
}
# what each library needs beyond its own requirements to run the tasks (found by running them)
EXTRA = {"nannyml": ["statsmodels"], "whylogs": ["scipy", "ipython"]}
IMPORT = {
    "evidently": "from evidently import Report; from evidently.metrics import ValueDrift",
    "alibi-detect": "from alibi_detect.cd import KSDrift",
    "nannyml": "import nannyml",
    "whylogs": "import whylogs; from whylogs.viz.drift.column_drift_algorithms import "
    "calculate_drift_scores",
}
DATA = """
import numpy as np, pandas as pd, time, json
rng = np.random.default_rng(0)
def tab(n, shift=0.0):
    return pd.DataFrame({"conv_rate": np.clip(rng.beta(2, 2, n) + shift, 0, 1),
                         "acc_rate": rng.beta(3, 2, n),
                         "avg_daily_trips": rng.poisson(12, n).astype(float),
                         "score": rng.uniform(size=n)})
def emb(n, shift=0.0):
    x = rng.normal(size=(n, 384)); x[:, :8] += shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)
REF, CUR = tab(5000), tab(1000, 0.15)
EREF, ECUR = emb(1000), emb(1000, 0.5)
out = {}
"""
TASKS = {
    "evidently": """
from evidently import Report, Dataset, DataDefinition
from evidently.metrics import ValueDrift
from evidently.metrics.embeddings import MMDDriftMethod, ModelDriftMethod
cols = list(REF.columns); dd = DataDefinition(numerical_columns=cols)
t = time.perf_counter()
snap = Report([*(ValueDrift(column=c, method=m) for c in cols for m in ("psi", "ks"))]).run(
    Dataset.from_pandas(CUR, data_definition=dd), Dataset.from_pandas(REF, data_definition=dd))
vals = {m["metric_name"]: m["value"] for m in snap.dict()["metrics"]}
out["tabular_s"] = time.perf_counter() - t
out["conv_rate"] = {k: v for k, v in vals.items() if "conv_rate" in k}
t = time.perf_counter()
auc = ModelDriftMethod()(pd.DataFrame(ECUR), pd.DataFrame(EREF))[0]
mmd = MMDDriftMethod()(pd.DataFrame(ECUR), pd.DataFrame(EREF))[0]
out["embedding_s"] = time.perf_counter() - t
out["embedding"] = {"domain_classifier_auc": float(auc), "mmd": float(mmd)}
""",
    "alibi-detect": """
from alibi_detect.cd import KSDrift, MMDDrift
t = time.perf_counter()
r = KSDrift(REF.to_numpy(), p_val=0.05).predict(CUR.to_numpy())
out["tabular_s"] = time.perf_counter() - t
out["conv_rate"] = {"ks_pvalue": float(r["data"]["p_val"][0])}
""",
    "nannyml": """
import nannyml as nml
t = time.perf_counter()
calc = nml.UnivariateDriftCalculator(column_names=list(REF.columns), chunk_number=1,
    continuous_methods=["kolmogorov_smirnov", "jensen_shannon"])
calc.fit(REF); res = calc.calculate(CUR).filter(period="analysis").to_df()
out["tabular_s"] = time.perf_counter() - t
""",
    "whylogs": """
import whylogs as why
from whylogs.viz.drift.column_drift_algorithms import calculate_drift_scores
t = time.perf_counter()
s = calculate_drift_scores(target_view=why.log(CUR).view(), reference_view=why.log(REF).view(),
                           with_thresholds=True)
out["tabular_s"] = time.perf_counter() - t
out["conv_rate"] = {"algorithm": s["conv_rate"]["algorithm"], "pvalue": s["conv_rate"]["pvalue"]}
""",
}
HAS = {  # read in their documentation, checked against the installed code
    "evidently": {"psi": True, "ks": True, "embedding": "MMD, domain classifier", "html": True},
    "alibi-detect": {"psi": False, "ks": True, "embedding": "MMD (TF/torch/keops)", "html": False},
    "nannyml": {
        "psi": False,
        "ks": True,
        "embedding": "PCA reconstruction, classifier",
        "html": "plotly figures",
    },
    "whylogs": {"psi": False, "ks": "on sketches", "embedding": False, "html": "notebook"},
}


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


def dist_size(site: Path, names: set[str]) -> tuple[int, float]:
    total, found = 0, 0
    for dist in md.distributions(path=[str(site)]):
        if dist.metadata["Name"].lower().replace("_", "-") in names:
            found += 1
            total += sum((site / f).stat().st_size for f in dist.files or [] if (site / f).exists())
    return found, total / 2**20


def measure(name: str, spec: str, venvs: Path) -> dict[str, Any]:
    found: dict[str, Any] = {"package": spec, "has": HAS[name]}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        dry = run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--report",
                   str(report), spec])  # fmt: skip
        adds, changes = [], []
        for item in json.loads(report.read_text())["install"] if dry.returncode == 0 else []:
            meta = item["metadata"]
            try:
                changes.append(f"{meta['name']} {md.version(meta['name'])} -> {meta['version']}")
            except md.PackageNotFoundError:
                adds.append(meta["name"].lower().replace("_", "-"))
        base = spec.split("==")[0].split("[")[0]
        try:  # a dependency here already: the dry run cannot tell what it added
            installed: str | None = md.version(base)
        except md.PackageNotFoundError:
            installed = None
        found["here"] = {"adds": len(adds), "changes": changes, "pip_rc": dry.returncode,
                         "already_installed": installed}  # fmt: skip
    venv = venvs / name
    python = venv / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", str(venv)])
        pandas = md.version("pandas")
        run([str(python), "-m", "pip", "install", "-q", spec, f"pandas=={pandas}",
             *EXTRA.get(name, [])])  # fmt: skip
    site = next((venv / "lib").glob("python3*/site-packages"))
    dists = len(list(site.glob("*.dist-info")))
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 2**20
    _, added = dist_size(site, set(adds))
    found["venv"] = {"distributions": dists, "mib": round(size), "added_here_mib": round(added)}
    imports = []
    for _ in range(3):
        code = (
            f"import time; t = time.perf_counter(); {IMPORT[name]}; print(time.perf_counter() - t)"
        )
        done = run([str(python), "-c", code])
        if done.returncode != 0:
            found["import_error"] = done.stderr.strip().splitlines()[-1:]
            return found
        imports.append(float(done.stdout.strip().splitlines()[-1]))
    found["import_s"] = round(statistics.median(imports), 2)
    done = run([str(python), "-c", DATA + TASKS[name] + "\nprint(json.dumps(out, default=float))"])
    if done.returncode != 0:
        found["task_error"] = done.stderr.strip().splitlines()[-1:]
    else:
        found["tasks"] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def _seconds(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown(results: dict[str, Any], machine: str, note: str) -> str:
    lines = [
        f"# Drift libraries side by side ({date.today()})", "", f"Machine: {machine}. {note}", "",
        "| library | here: adds / changes | venv (dists, MiB) | added here (MiB) | import s | "
        "4-column drift s | embeddings s | PSI | KS | embedding drift |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results.values():
        tasks, has = r.get("tasks", {}), r["has"]
        changes = "; ".join(r["here"]["changes"]) or "none"
        if r["here"].get("already_installed"):
            changes = f"already installed here ({r['here']['already_installed']}): see the note"
        lines.append(
            f"| {r['package']} | {r['here']['adds']} / {changes} | "
            f"{r['venv']['distributions']}, {r['venv']['mib']} | {r['venv']['added_here_mib']} | "
            f"{r.get('import_s', r.get('import_error'))} | "
            f"{_seconds(tasks.get('tabular_s', r.get('task_error', '-')))} | "
            f"{_seconds(tasks.get('embedding_s', '-'))} "
            f"| {has['psi']} | {has['ks']} | {has['embedding']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venvs", type=Path, required=True, help="where the fresh venvs go")
    parser.add_argument("--save", type=Path, help="folder for <date>-vm-drift-libraries.{json,md}")
    parser.add_argument("--note", default="", help="e.g. 'measured while the machine was shared'")
    args = parser.parse_args()
    args.venvs.mkdir(parents=True, exist_ok=True)
    results = {name: measure(name, spec, args.venvs) for name, spec in CANDIDATES.items()}
    cpu = next((line.split(":", 1)[1].strip() for line in run(["lscpu"]).stdout.splitlines()
                if line.startswith("Model name")), platform.processor())  # fmt: skip
    machine = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    text = markdown(results, machine, args.note)
    print(text)
    if args.save:
        stem = args.save / f"{date.today()}-vm-drift-libraries"
        stem.with_suffix(".json").write_text(
            json.dumps({"machine": machine, "note": args.note, "results": results}, indent=2) + "\n"
        )
        stem.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
