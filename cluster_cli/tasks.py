"""The task collection: every task module's tasks in one flat namespace."""

from invoke import Collection, Task

from . import (
    core_tasks,
    demo,
    job_tasks,
    ops_tasks,
    preflight_tasks,
    serving_tasks,
    sim_tasks,
    status_tasks,
    transfer_tasks,
)

TASK_MODULES = (core_tasks, status_tasks, ops_tasks, transfer_tasks, job_tasks, serving_tasks,
                preflight_tasks, sim_tasks, demo)

ns = Collection()
for module in TASK_MODULES:
    for task_obj in vars(module).values():
        if isinstance(task_obj, Task):
            ns.add_task(task_obj)
