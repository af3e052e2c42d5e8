#!/usr/bin/env python3
"""Parses a Nomad job file offline (python-hcl2) and checks what Autonomous relies on:
the ingress, worker and coordinator groups, each with a service health check, a scaling
block and a task that runs the app image in its role; update and migrate stanzas."""
import sys

import hcl2
from hcl2.utils import SerializationOptions

REQUIRED_GROUPS = {"ingress": "ingress", "worker": "worker", "coordinator": "coordinator", "python-worker": "-m"}


def blocks(value):
    """hcl2 gives repeated blocks as a list of {label: body} dicts."""
    if isinstance(value, dict):
        return [value]
    return value or []


def main(path):
    with open(path) as f:
        doc = hcl2.load(f, serialization_options=SerializationOptions(strip_string_quotes=True, explicit_blocks=False))
    problems = []
    jobs = {k: v for block in blocks(doc.get("job")) for k, v in block.items()}
    if len(jobs) != 1:
        problems.append(f"expected one job, found {len(jobs)}")
    for name, job in jobs.items():
        for stanza in ("update", "migrate"):
            if not blocks(job.get(stanza)):
                problems.append(f"job {name}: missing {stanza} stanza")
        groups = {k: v for block in blocks(job.get("group")) for k, v in block.items()}
        for group_name, role in REQUIRED_GROUPS.items():
            group = groups.get(group_name)
            if group is None:
                problems.append(f"job {name}: missing group '{group_name}'")
                continue
            where = f"group {group_name}"
            count = group.get("count")
            if not ((isinstance(count, int) and count >= 0) or (isinstance(count, str) and count.startswith("${var."))):
                problems.append(f"{where}: count must be a positive integer or a variable")
            scaling = blocks(group.get("scaling"))
            if not scaling:
                problems.append(f"{where}: missing scaling block")
            else:
                s = scaling[0]
                if not (isinstance(s.get("min"), int) and isinstance(s.get("max"), int) and s["min"] <= s["max"]):
                    problems.append(f"{where}: scaling needs integer min <= max")
            services = blocks(group.get("service"))
            checks = [c for svc in services for c in blocks(svc.get("check"))]
            if not services or not checks:
                problems.append(f"{where}: needs a service with a health check")
            for check in checks:
                if check.get("type") == "http" and check.get("path") not in ("/healthz", "/readyz"):
                    problems.append(f"{where}: http check path must be /healthz or /readyz")
            tasks = {k: v for block in blocks(group.get("task")) for k, v in block.items()}
            if len(tasks) != 1:
                problems.append(f"{where}: expected one task, found {len(tasks)}")
            for task_name, task in tasks.items():
                config = blocks(task.get("config"))
                args = config[0].get("args", []) if config else []
                if isinstance(args, str) and role == "-m":  # concat(["-m", "autonomous", "worker", …], …)
                    args = ["-m"] if args.startswith('${concat(["-m", "autonomous", "worker"') else [args]
                if not args or args[0] != role:
                    problems.append(f"{where} task {task_name}: args must start with '{role}', got {args}")
                if task.get("kill_signal") != "SIGTERM":
                    problems.append(f"{where} task {task_name}: kill_signal must be SIGTERM (graceful drain)")
                if not blocks(task.get("resources")):
                    problems.append(f"{where} task {task_name}: missing resources")
                if not blocks(task.get("template")):
                    problems.append(f"{where} task {task_name}: secrets must come from a template")
    if problems:
        for p in problems:
            print(f"{path}: {p}")
        return 1
    print(f"{path}: job {', '.join(jobs)} has groups {', '.join(REQUIRED_GROUPS)} with checks and scaling: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
