"""Step functions for the workflow crash/resume tests, importable by a spawned child process.

The parent test and the child process register these very functions, so both sides pin the
same callable versions (the version follows the code, not the process). ``double`` kills its
process with :data:`CRASH_CODE` when the file named by :data:`CRASH_ENV` exists: the child
sets it, the parent (resuming) does not.

:func:`child_main` is what the crashing child runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import forseti as fs

CRASH_ENV = "FORSETI_TEST_WORKFLOW_CRASH_FILE"
CRASH_CODE = 17
SEED_VALUE = 21


@fs.callable("wfsteps.seed")
def seed(label: str, value: int) -> fs.ConfigEntity:
    return fs.ConfigEntity(name=label, params={"value": value})


@fs.callable("wfsteps.double")
def double(cfg: fs.ConfigEntity) -> fs.ConfigEntity:
    flag = os.environ.get(CRASH_ENV)
    if flag and os.path.exists(flag):
        os._exit(CRASH_CODE)  # a hard crash: no cleanup, no atexit, no finally blocks
    return cfg.evolve(params={**cfg.params, "value": cfg.params["value"] * 2})


@fs.callable("wfsteps.summarize")
def summarize(doubled: fs.ConfigEntity, original: fs.ConfigEntity) -> dict[str, Any]:
    return {
        "doubled": doubled.params["value"],
        "original": original.params["value"],
        "versions": [original.version, doubled.version],
        "same_lineage": doubled.lineage_id == original.lineage_id,
    }


def register(reg: fs.EntityRegistry) -> list[fs.FunctionSpec]:
    """Register this module's step functions with ``reg``."""
    return reg.callables.include(sys.modules[__name__])


def build_workflow(run_name: str) -> fs.Workflow:
    """seed -> double -> summarize (summarize also reads seed's output)."""
    wf = fs.Workflow(run_name, max_concurrency=2)
    first = wf.step("wfsteps.seed", name="seed", label=f"{run_name}-cfg", value=SEED_VALUE)
    second = wf.step("wfsteps.double", name="double", cfg=first)
    wf.step("wfsteps.summarize", name="summarize", doubled=second, original=first)
    return wf


def child_main(url: str, run_name: str) -> int:
    reg = fs.open(url)
    register(reg)
    build_workflow(run_name).run(reg)
    reg.close()
    return 0  # only reached when the crash flag is not set
