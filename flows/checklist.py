"""The seed's "Pre-Deployment Checklist" as a gate before the rollout.

Design decisions:

* The form is built from the plan: one switch per checklist item (labelled with the item's own
  words, every one required, so none reads "(Optional)") plus ``confirmed_by``, which has
  no default so the form cannot be submitted blind.
* Items with an automatic check are checked first and the form is pre-filled with the
  result, so the person sees the evidence. The evidence also binds: an item whose check
  failed stays unconfirmed whatever the form says, because "dashboards created" is a fact
  about files, not an opinion.
  - ``monitoring_rendered``: the rules and dashboard files exist, equal what the renderer
    produces from this plan now, and ``promtool check rules`` accepts the rules.
  - ``load_tested``: some phase runs a load check of at least ``LOAD_TEST_REQUESTS`` requests.
  - ``rollback_rehearsed``: a ``phasegate rehearse PLAN --prove`` of this plan's exact content
    (its SHA-256) is recorded on the Prefect API in force and every case matched: the healthy
    rehearsal promoted, every trigger rolled back by its strategy, every criterion held.
* The checks are tasks in this module: each is one small read of local files or one
  ``promtool`` call, and nothing else uses them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from phasegate import record, runctx
from phasegate.plan import ChecklistItem, RolloutPlan, load_plan
from phasegate.prove import plan_digest
from phasegate.render.alerts import render_alerts, to_yaml
from phasegate.render.dashboard import render_dashboard, to_json
from tasks.common import NO_CACHE

LOAD_TEST_REQUESTS = 1000


def field_name(item: ChecklistItem, index: int) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", item.item.lower()).strip("_")[:48].rstrip("_")
    return f"item_{index + 1}_{words}"


class _AllRequired(RunInput):
    # Every item in the schema's required list: the UI labels a field with a default
    # "(Optional)", and no checklist item is optional. The UI sends an untouched switch as off.
    model_config = pydantic.ConfigDict(
        json_schema_extra=lambda schema, cls: schema.update(required=list(schema.get("properties", {}))))


def checklist_form(plan: RolloutPlan, evidence: Mapping[str, tuple[bool, str]] | None = None) -> type[RunInput]:
    """A ``RunInput`` with a switch per checklist item and ``confirmed_by``.

    An item with an automatic check starts as the check found, and the check's result is
    the item's description, right under its label. Both are part of the field itself, not
    ``with_initial_data``: Prefect rebuilds the fields given initial data without their
    titles, and the UI then labels them by their (truncated) field names."""
    assert plan.checklist is not None
    fields: dict[str, Any] = {}
    for i, item in enumerate(plan.checklist.items):
        name = field_name(item, i)
        found = (evidence or {}).get(name)
        if found is None:
            fields[name] = (bool, pydantic.Field(title=item.item, description="Switch on to confirm."))
        else:
            ok, text = found
            note = "Automatic check passed: " if ok else "Automatic check failed (stays unconfirmed): "
            fields[name] = (bool, pydantic.Field(ok, title=item.item, description=note + text))
    fields["confirmed_by"] = (str, pydantic.Field(min_length=1, title="Confirmed by"))
    return pydantic.create_model("ChecklistInput", __base__=_AllRequired, **fields)


def default_paths(plan: RolloutPlan, plan_path: Path) -> tuple[Path, Path]:
    """Where ``phasegate render`` output is checked in: ``deployments/{rules,dashboards}`` beside ``plans/``."""
    root = plan_path.resolve().parent.parent
    return root / "rules" / f"{plan.name}.rules.yaml", root / "dashboards" / f"{plan.name}.json"


@task(name="check_monitoring_rendered", **NO_CACHE)
def check_monitoring_rendered(plan: RolloutPlan, rules: Path, dashboard: Path) -> tuple[bool, str]:
    if not rules.exists() or not dashboard.exists():
        return False, f"missing: {', '.join(str(p) for p in (rules, dashboard) if not p.exists())}"
    if rules.read_text() != to_yaml(render_alerts(plan)) or dashboard.read_text() != to_json(render_dashboard(plan)):
        return False, "rendered files are out of date with the plan: run `phasegate render`"
    promtool = shutil.which("promtool")
    if promtool is None:
        return False, "promtool not found: cannot check the rules"
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return False, f"promtool rejects the rules: {(result.stderr or result.stdout).strip()[:300]}"
    return True, f"{rules.name} and {dashboard.name} are current; promtool accepts the rules"


def check_load_tested(plan: RolloutPlan) -> tuple[bool, str]:
    loads = [(p.name, c) for p in plan.phases for c in p.checks if c.kind == "load"]
    enough = [(phase, c) for phase, c in loads if c.requests >= LOAD_TEST_REQUESTS]
    if enough:
        phase, check = enough[0]
        return True, f"phase {phase}, load check {check.name}: {check.requests} requests, {check.concurrency} at once"
    return False, f"no phase runs a load check of at least {LOAD_TEST_REQUESTS} requests"


def check_rollback_proven(plan: RolloutPlan, plan_path: Path) -> tuple[bool, str]:
    """A ``rehearse --prove`` of exactly this plan's content, every case matched, recorded on
    this Prefect API: "documented" is the plan, "tested" is the proof."""
    from tasks.prefect_api import latest_proof

    command = f"`PREFECT_API_URL=... phasegate rehearse {plan_path} --prove`"
    try:
        proof = latest_proof(plan.name)
    except Exception as exc:
        return False, f"could not read the proof from the Prefect API ({type(exc).__name__}); run {command}"
    if proof is None:
        return False, f"no proof of {plan.name} is recorded on this Prefect API: run {command}"
    when = proof.get("at") or proof.get("created") or "?"
    if proof.get("sha256") != plan_digest(plan_path):
        return False, f"the proof of {when} is of another version of the plan (it changed since): run {command}"
    if not proof.get("matched"):
        failed = ", ".join(proof.get("failed") or []) or "some cases"
        return False, f"the proof of {when} did not match ({failed}): fix the plan or the rollback, then run {command}"
    return True, f"proven {when}: {proof.get('cases')} rehearsals (healthy, every trigger, every criterion) matched"


@flow(name="pre-deployment-checklist")
def pre_deployment_checklist(
    plan_path: str,
    image: str | None = None,
    rules_path: str | None = None,
    dashboard_path: str | None = None,
    timeout_seconds: int = 86400,
    poll_interval_seconds: int = 10,
    rehearsal: bool = False,
) -> bool:
    """Run the automatic checks, then pause for a person to confirm every item. True if all hold.

    With ``image``, a fully confirmed checklist is recorded on the production Deployment for
    that plan and image; a plan whose checklist is ``required`` will not roll out without it.
    """
    plan = load_plan(plan_path)
    if plan.checklist is None or not plan.checklist.items:
        return True
    default_rules, default_dashboard = default_paths(plan, Path(plan_path))
    rules = Path(rules_path) if rules_path else default_rules
    dashboard = Path(dashboard_path) if dashboard_path else default_dashboard

    evidence: dict[str, tuple[bool, str]] = {}
    for i, item in enumerate(plan.checklist.items):
        if item.auto == "monitoring_rendered":
            evidence[field_name(item, i)] = check_monitoring_rendered(plan, rules, dashboard)
        elif item.auto == "load_tested":
            evidence[field_name(item, i)] = check_load_tested(plan)
        elif item.auto == "rollback_rehearsed":
            # A rehearsal is not the rollout the proof guards, and may be one of the proof's own.
            evidence[field_name(item, i)] = ((True, "not asked in a rehearsal; a real run needs a --prove of this plan")
                                             if rehearsal else check_rollback_proven(plan, Path(plan_path)))

    lines = ["# Pre-deployment checklist", "", "| Item | Automatic check |", "|---|---|"]
    for i, item in enumerate(plan.checklist.items):
        found = evidence.get(field_name(item, i))
        auto = "—" if found is None else ("✅ " if found[0] else "❌ ") + found[1]
        lines.append(f"| {item.item} | {auto.replace('|', '/')} |")
    # The form's own fields carry each check's result; the description stays narrow enough
    # for the Resume dialog (a table of long check results there is clipped on the right).
    description = "\n".join([
        "# Pre-deployment checklist", "",
        f"Confirm each of the {len(plan.checklist.items)} items that holds. An item with an automatic check "
        "starts as the check found, with its result under the item; a failed check keeps the item unconfirmed "
        "whatever its switch says.",
    ])
    form = checklist_form(plan, evidence)
    _tell_observer(list(form.model_fields))
    answer = pause_flow_run(
        wait_for_input=form.with_initial_data(description=description),
        timeout=timeout_seconds,
        poll_interval=poll_interval_seconds,
        key=f"checklist-{plan.name}",
    )
    confirmed = {
        name: bool(getattr(answer, name)) and evidence.get(name, (True, ""))[0]
        for name in (field_name(item, i) for i, item in enumerate(plan.checklist.items))
    }
    confirmed_by = str(answer.model_dump()["confirmed_by"])
    result = ["", f"Confirmed by: {confirmed_by}", ""]
    result += [
        f"- {'✅' if confirmed[field_name(item, i)] else '❌'} {item.item}"
        for i, item in enumerate(plan.checklist.items)
    ]
    create_markdown_artifact(
        markdown="\n".join(lines + result) + "\n", key=f"checklist-{plan.name}", description="Pre-deployment checklist"
    )
    done = all(confirmed.values())
    if done and image:
        record_checklist(plan, image, confirmed_by)
    return done


CHECKLIST_ANNOTATION = record.ANN_CHECKLIST


def record_checklist(plan: RolloutPlan, image: str, confirmed_by: str) -> None:
    from tasks.cluster import annotate_release

    annotate_release(
        plan.target.namespaces.production, plan.target.deployment,
        {CHECKLIST_ANNOTATION: f"{record.rollout_id(plan.name, image)} by {confirmed_by}"},
    )


def checklist_confirmed(plan: RolloutPlan, image: str, annotations: dict[str, str]) -> bool:
    return annotations.get(CHECKLIST_ANNOTATION, "").startswith(record.rollout_id(plan.name, image) + " by ")


def _tell_observer(fields: list[str]) -> None:
    """Let the run context's pause observer know the checklist is waiting (rehearsals answer it)."""
    from prefect.context import FlowRunContext

    # Without an image nothing on the cluster is touched, so a checklist may run with no run
    # context at all; only an observer, if one is set, is told.
    ctx, run = FlowRunContext.get(), runctx.peek()
    if ctx is not None and ctx.flow_run is not None and run is not None:
        run.tell_pause(str(ctx.flow_run.id), "checklist", fields, "checklist")
