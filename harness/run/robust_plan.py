"""`run --perturb`: one robustness job beside each single-model evaluation of a plan.

A robustness job (`<run>/robust`, stage `robust`) loads the same model as its evaluation (`<run>/eval`) and
depends on the same training job (if any) and on that evaluation, whose stored matrix is its clean matrix
(nothing is scored twice; each side is encoded once for the pass to reuse). Its identity is the evaluation's
config plus the perturbation spec and seed, the evaluation's key, and the code of the perturbations and of the
pass beside the evaluation's matrix code. Ensembles get none (a pass measures one model).
"""

from __future__ import annotations

from dataclasses import replace

from harness.core.code_identity import EVALUATION, ROBUSTNESS_PARTS, hash_files, module_files
from harness.run.plan import UNHASHED, Job, Plan, _digest, identity, job_key

ROBUST = "robust"
ROBUST_MODULES = ("harness.eval.perturb", "harness.eval.robustness")


def robustness_code() -> str:
    """The parsed-code hash of the perturbations and the robustness pass (with evaluation.py's part that runs it,
    which the matrix identity leaves out)."""
    evaluation = module_files(EVALUATION)
    return hash_files([*(f for m in ROBUST_MODULES for f in module_files(m)), *evaluation],
                      only={f: ROBUSTNESS_PARTS for f in evaluation})


def add_robustness_jobs(plan: Plan, spec: str, seed: int) -> list[Job]:
    """Add (and return) a robustness job for each single-model evaluation job of `plan`."""
    by_name = plan.by_name()
    code = robustness_code()
    added = []
    for job in list(plan.jobs):
        if job.stage != "evaluate" or job.config.members is not None or not job.name.endswith("/eval"):
            continue
        config = job.config.replace(stage=ROBUST, robustness={"spec": spec, "seed": int(seed), "evaluation": job.name})
        depends = (*job.depends, job.name)
        hashed = {k: v for k, v in config.as_dict().items() if k not in UNHASHED}
        hashed.update({f"key_of_{d}": by_name[d].key for d in depends})
        job_code = _digest({"matrix": job.identity.get("code", ""), "robustness": code})
        data = str(job.identity.get("data", ""))
        robust = replace(job, name=job.name[: -len("/eval")] + "/" + ROBUST, stage=ROBUST, config=config,
                         depends=depends, key=job_key(hashed, data, job_code),
                         identity=identity(hashed, data, job_code), protocols="")
        if robust.name not in by_name:
            plan.jobs.append(robust)
            added.append(robust)
    if not added:
        plan.notes.append("--perturb: no single-model evaluation in the plan; no robustness job added")
    return added
