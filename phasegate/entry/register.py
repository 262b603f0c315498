"""Deployments and their automations from ``prefect.yaml``, registered the way ``prefect deploy`` does.

Design decisions:

* ``prefect deploy --all`` is how a team registers phasegate (it also builds and pulls the
  code for a work pool). A test, or a process that serves the flows itself, needs the same
  deployments and the same automations without a work pool: ``register`` reads the same file,
  creates each named deployment for its entry flow, and turns each ``triggers:`` entry into
  an automation with Prefect's own schema (``DeploymentTriggerTypes``) and
  ``as_automation()``, as ``prefect deploy`` does — so the file is the one declaration, and
  what the test exercises is what a deploy creates.
* Each deployment carries its entry flow's parameter schema, as ``prefect deploy`` sends it:
  without one the UI's Run form shows no typed fields (plan path, reason, who asks) to fill in.
* Re-registering replaces the automations a deployment owns instead of adding copies.
* The file's ``pull`` steps (a deployment's own, else the top-level ones) are stored as
  written, as ``prefect deploy`` stores them: a worker's flow-run process runs them, and
  resolves ``{{ $PHASEGATE_HOME }}`` from its own environment, so a worker started here
  finds the entrypoint and the plan where a deployed one would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from pydantic import TypeAdapter


def deployment_triggers(spec: dict[str, Any]) -> list[Any]:
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes

    adapter: TypeAdapter[Any] = TypeAdapter(DeploymentTriggerTypes)
    out = []
    for i, trigger in enumerate(spec.get("triggers") or [], start=1):
        out.append(adapter.validate_python({"name": f"{spec['name']}__automation_{i}", **trigger}))
    return out


def register(prefect_yaml: str | Path, names: list[str], *, work_pool: str | None = None) -> dict[str, UUID]:
    """Create (or update) the named deployments of ``prefect_yaml`` and their automations."""
    from prefect.client.orchestration import get_client
    from prefect.utilities.callables import parameter_schema

    data = yaml.safe_load(Path(prefect_yaml).read_text())
    specs = {d["name"]: d for d in data["deployments"]}
    unknown = sorted(set(names) - set(specs))
    if unknown:
        raise KeyError(f"{prefect_yaml}: no deployment named {', '.join(unknown)}")
    ids: dict[str, UUID] = {}
    with get_client(sync_client=True) as client:
        for name in names:
            spec = specs[name]
            path, flow_name = spec["entrypoint"].split(":")
            entry = _flow(path, flow_name)
            flow_id = client.create_flow_from_name(entry.name)
            deployment_id = client.create_deployment(
                flow_id=flow_id, name=name, entrypoint=spec["entrypoint"], parameters=spec.get("parameters") or {},
                description=spec.get("description"), work_pool_name=work_pool,
                pull_steps=spec.get("pull", data.get("pull")) or None,
                parameter_openapi_schema=parameter_schema(entry).model_dump(exclude_unset=True),
            )
            client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
            for trigger in deployment_triggers(spec):
                trigger.set_deployment_id(deployment_id)
                client.create_automation(trigger.as_automation())
            ids[name] = deployment_id
    return ids


def _flow(path: str, attribute: str) -> Any:
    import importlib

    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, attribute)
