"""The accuracy budgets in plain words: what ``report.json`` and ``tritonstack export`` say.

Each sentence names what is compared with what, on which inputs, and the threshold, so a
reader of a report knows what "passed" promised without reading the code.
"""

from __future__ import annotations

from export.spec import Task
from export.variants import Budgets, Variant
from export.verify import Metric

_PARITY = {
    Metric.COSINE: "the variant's vector has a cosine similarity of at least {t} with PyTorch's "
    "for every input",
    Metric.TOP1: "the variant picks PyTorch's top-1 class for at least {p} of the inputs",
    Metric.REL_L2: "the variant's output differs from PyTorch's by at most {t} of the output's "
    "length (relative L2 error) for every input",
}


def explain(task: Task, budgets: Budgets, evaluation: str | None = None) -> list[str]:
    """One sentence per budget a variant of a ``task`` model is held to (``evaluation``: what
    the task metrics were measured on, when known)."""
    fp32 = budgets.of(Variant.FP32, task)
    fp16, int8 = budgets.of(Variant.FP16, task), budgets.of(Variant.INT8, task)

    def parity(budget_metric: Metric, threshold: float) -> str:
        return _PARITY[budget_metric].format(t=f"{threshold:g}", p=f"{threshold:.0%}")

    found = [
        "Parity with PyTorch, on random inputs of several batch sizes and lengths (and on "
        "--sample-data): fp32 and optimized pass when "
        + parity(fp32.metric, fp32.threshold)
        + "; fp16 when "
        + parity(fp16.metric, fp16.threshold)
        + "; every int8 variant when "
        + parity(int8.metric, int8.threshold)
        + ".",
        "Batch invariance, for every variant: the same input, run alone, in batches of 8 with "
        "different other inputs, and (text) padded with masked tokens, as Triton batches "
        "concurrent callers, "
        f"gives answers that differ by at most {budgets.invariance:g} of their length; "
        "otherwise one caller's answer would depend on who else called at the same time.",
    ]
    t = budgets.task
    where = evaluation or (
        "the model's evaluation set: for MiniLM 1,200 sentences from the Python standard "
        "library's docstrings; else --sample-data; else generated inputs"
    )
    on_real = f"On real inputs ({where}), against the fp32 export: "
    if task is Task.EMBEDDING:
        found.append(
            on_real + f"of each text's 10 nearest neighbours under fp32, on average at least "
            f"{t.recall_at_10:.0%} must still be among the variant's 10 nearest (recall@10), "
            f"and the variant must order all pairs of texts by similarity as fp32 does "
            f"(Spearman rank correlation >= {t.spearman})."
        )
    elif task is Task.CLASSIFIER:
        found.append(
            on_real + f"the variant predicts fp32's class for at least {t.top1_agreement:.0%} "
            f"of the inputs, and with labels its accuracy is at most {t.accuracy_delta:g} "
            "below fp32's."
        )
    else:
        found.append(
            on_real + f"with yes/no labels (the driver ranker's held-out offers), the variant's "
            f"AUC is within {t.auc_delta:g} of fp32's; without labels, it ranks the inputs as "
            f"fp32 does (Spearman rank correlation >= {t.spearman})."
        )
    found.append(
        "A variant that misses any budget is never served; among those that pass, a less "
        "faithful one is served only when it is clearly faster (see min_gain)."
    )
    return found
