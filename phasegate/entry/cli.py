"""The ``phasegate`` command.

Exit codes are part of the interface, so scripts and CI can branch on them:
0 success / promoted, 1 internal error, 2 bad input (plan, arguments), 3 rolled back,
4 halted for a person.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

# When the command started, near enough: what "first gate round after N s" counts from.
_STARTED = time.monotonic()

if len(sys.argv) > 1 and sys.argv[1] == "rehearse" and not {"--help", "-h"} & set(sys.argv):
    # Before this module's own imports (a second on 2 cores): the temporary Prefect API that a
    # rehearsal without PREFECT_API_URL runs on takes ~5 s to boot and is the first thing its
    # rollout needs. Bad input still exits 2; the server is stopped by its PID at exit.
    from phasegate.rehearsal.prefect_server import temporary_api_for_this_process

    temporary_api_for_this_process()
    if "--prove" not in sys.argv:
        # The world's Prometheus too: its target ticks count from its own start (start_early
        # says why). A proof starts a world per case and takes none.
        from phasegate.rehearsal.prometheus import start_early

        start_early()

import typer  # noqa: E402

from phasegate.durations import format_duration  # noqa: E402
from phasegate.entry.clikit import EXIT_BAD_INPUT, EXIT_BY_OUTCOME, err, load_or_exit, out  # noqa: E402
from phasegate.plan import RolloutPlan, warning_lines  # noqa: E402

app = typer.Typer(
    name="phasegate",
    help="Progressive Kubernetes rollouts run as Prefect workflows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Progressive Kubernetes rollouts run as Prefect workflows."""


def summary(plan: RolloutPlan) -> list[str]:
    t = plan.target
    lines = [
        f"plan {plan.name}: {t.namespaces.production}/{t.deployment} (container {t.container})",
        f"  {len(plan.metrics)} metrics, {len(plan.alerts)} alerts, "
        f"{len(plan.dashboard.panels) if plan.dashboard else 0} dashboard panels",
    ]
    for p in plan.phases:
        lines.append(
            f"  phase {p.name}: {p.environment.value} {p.canary_share:g}%, soak {format_duration(p.soak)} "
            f"every {format_duration(p.interval)}; {len(p.triggers)} triggers, {len(p.success)} success criteria, "
            f"{len(p.checks)} checks; rollback {p.default_rollback.value}"
        )
    if plan.reviews:
        cadence = ", ".join(f"{c.name} every {format_duration(c.every)}" for c in plan.reviews.cadence)
        lines.append(f"  reviews: {cadence}; {len(plan.reviews.gates)} gates")
    if plan.signoff:
        incident = f", closes {plan.signoff.incident}" if plan.signoff.incident else ""
        lines.append(f"  sign-off after {format_duration(plan.signoff.after)}{incident}")
    return lines


@app.command()
def validate(
    plan: Path = typer.Argument(..., help="Plan YAML file."),
    replicas: int | None = typer.Option(
        None, min=1, help="Production replica count: print each phase's real share and refuse those "
        "further off than target.share_tolerance."),
) -> None:
    """Check a plan; print a summary, or every problem as FILE:LINE: path: message (exit 2)."""
    loaded = load_or_exit(plan, replicas)
    for line in summary(loaded):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    for line in warning_lines(plan):
        err.print(line, markup=False, highlight=False, soft_wrap=True, style="yellow")
    total = replicas or loaded.target.replicas
    if total is not None:
        out.print(f"  shares at {total} replica(s):", highlight=False)
        for share in loaded.shares(total):
            out.print(f"    {share.describe()}", markup=False, highlight=False)
    out.print("valid", style="green")


@app.command()
def rehearse(
    plan: Path = typer.Argument(..., help="Plan YAML file."),
    scenario: str = typer.Option("healthy", help="Built-in scenario name or a scenario YAML file."),
    speed: float = typer.Option(28800.0, help="Plan seconds per wall second (28800: 8 h per second)."),
    approve: str = typer.Option("auto", help="auto | reject@PHASE | timeout@PHASE | ui"),
    image: str | None = typer.Option(None, help="The new image (default: the next version of the seeded one)."),
    report: Path | None = typer.Option(None, help="Write the JSON report here (with --prove, the .md beside it)."),
    prove: bool = typer.Option(False, "--prove", help="Prove the plan: a healthy rehearsal, one per trigger "
                               "and one per success criterion, each judged against what the plan promises."),
    concurrency: int = typer.Option(0, min=0, help="With --prove: rehearsals at once (0: 3 per core)."),
    workload: Path | None = typer.Option(
        None, help="Levels for the workload derived from the plan's queries (request rate, latency, error share)."),
) -> None:
    """Run the real rollout flow against a loopback cluster, app and Prometheus, with faults.

    Exit codes: 0 promoted, 3 rolled back, 4 halted for a person, 2 bad input, 1 internal error.
    With --prove: 0 when every case matched, 3 otherwise.
    """
    import os

    # Prefect reads its settings at import: keep the terminal for the live view, not the server's
    # chatter, while the rollout's own INFO lines (run and task loggers) still reach the run's
    # Logs tab through Prefect's API handler; the console handler shows warnings only.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    loaded = load_or_exit(plan)
    if prove:
        from phasegate.rehearsal.prefect_server import temporary_api_for_this_process

        persistent = bool(os.environ.get("PREFECT_API_URL"))
        api = temporary_api_for_this_process()
        if api is not None:
            api.wait()
        raise typer.Exit(prove_plan(plan, loaded, speed=speed, concurrency=concurrency, report=report,
                                    workload=workload, record=persistent))
    try:
        from phasegate.rehearsal.prefect_server import temporary_api_for_this_process
        from phasegate.rehearsal.scenarios import ScenarioError
        from phasegate.rehearsal.world import Approver, prepare
    except ImportError as exc:  # the flow image ships without the rehearsal world
        err.print(f"phasegate rehearse needs the rehearsal extra (pip install 'phasegate[rehearsal]'): {exc}",
                  markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None

    try:
        # Checked against the plan before anything starts: a phase, gate or metric it lacks is FILE:LINE.
        prepare(loaded, scenario, workload)
        Approver(approve)
    except (ScenarioError, ValueError) as exc:
        err.print(f"{exc}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    # Before anything imports Prefect (none of the above does): the temporary API boots while
    # the flows are imported and the world starts (prefect_server.TemporaryAPI says why).
    api = temporary_api_for_this_process()
    if any(g.kind.value == "judge" for phase in loaded.phases for g in phase.gates()):
        # scipy, the judge's statistics, takes 2-3 s to import on 2 cores: in the background
        # while the world waits for Prometheus, not inside the first judged gate round.
        import importlib
        import threading

        threading.Thread(target=importlib.import_module, args=("phasegate.judge",), name="import-judge",
                         daemon=True).start()
    from phasegate.entry.rehearse import rehearse as run_rehearsal

    out.print(f"rehearsing {loaded.name} with scenario {scenario!r} at {speed:g}x", highlight=False)
    from phasegate.adapters.console import ConsoleNotifier
    from phasegate.rehearsal.world import clamping, notifier_for
    from phasegate.render.live import LiveView

    for line in clamping(loaded, speed):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    notifier = notifier_for(loaded)
    if isinstance(notifier, ConsoleNotifier):
        notifier = ConsoleNotifier(out)  # printed above the live view, not through it
    try:
        with LiveView(loaded, out) as view:
            result = run_rehearsal(plan, scenario=scenario, speed=speed, approve=approve, image=image,
                                   report_path=report, notifier=notifier, on_event=_FirstRound(view, _STARTED),
                                   before_run=api.wait if api is not None else None, workload_file=workload)
    except Exception as exc:
        # The flows are imported inside the world (entry.rehearse says why), so are their errors.
        from flows.rollout import PreflightFailed, RolloutRefused

        if not isinstance(exc, (PreflightFailed, RolloutRefused)):
            raise
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    print_outcome(result)
    raise typer.Exit(EXIT_BY_OUTCOME[result["outcome"]])


def prove_plan(plan: Path, loaded: RolloutPlan, *, speed: float, concurrency: int, report: Path | None,
               workload: Path | None = None, record: bool = True) -> int:
    """``rehearse --prove``: every case, a table, the reports, the record the checklist reads."""
    from prefect.settings import PREFECT_API_URL

    from phasegate.entry import prove as proving
    from phasegate.prove import plan_cases

    cases = plan_cases(loaded)
    concurrency = concurrency or proving.DEFAULT_CONCURRENCY
    out.print(f"proving {loaded.name}: {len(cases)} rehearsals at {speed:g}x, {concurrency} at a time",
              highlight=False)
    proof = proving.run_proof(plan, speed=speed, concurrency=concurrency, workload_file=workload,
                              on_result=lambda r: out.print(
        f"  {'ok' if r.matched else 'NO'}  {r.case.id}: {r.actual} ({r.wall_seconds:.0f} s)", highlight=False,
        markup=False))
    out.print(proof.table(), markup=False, highlight=False)
    if report is not None:
        json_path, md_path = proving.write_reports(proof, report)
        out.print(f"report: {json_path}, {md_path}", highlight=False)
    if record and PREFECT_API_URL.value():
        try:
            proving.record(proof)
            out.print(f"recorded on {PREFECT_API_URL.value()} as proof-{loaded.name} (sha256 {proof.digest[:12]})",
                      highlight=False)
        except Exception as exc:
            err.print(f"could not record the proof on the Prefect API: {exc}", markup=False)
    else:
        out.print("not recorded: no PREFECT_API_URL, so the checklist cannot read this proof", highlight=False)
    verdict = "every case matched" if proof.matched else "some cases did not match"
    out.print(f"{loaded.name}: {verdict} in {proof.wall_seconds:.0f} s", highlight=False)
    return 0 if proof.matched else EXIT_BY_OUTCOME["rolled_back"]


class _FirstRound:
    """Passes every event on to the live view; says once when the first gate round is in, and
    how long after the command started: what a person waits for before seeing any verdict."""

    def __init__(self, view: Any, started: float) -> None:
        self.view, self.started, self.seen = view, started, False

    def __call__(self, event: Any, /) -> None:
        if not self.seen and event.get("event") == "round":
            self.seen = True
            out.print(f"first gate round ({event.get('phase')}) {time.monotonic() - self.started:.1f}s after start",
                      highlight=False)
        self.view(event)


def print_outcome(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{result['rollout']}: {result['outcome']}")
    for column in ("phase", "outcome", "rounds", "wall s", "reason"):
        table.add_column(column)
    for p in result["phases"]:
        table.add_row(
            p["name"], p["outcome"], str(len(p["rounds"])), f"{p['ended_wall'] - p['started_wall']:.1f}", p["reason"]
        )
    out.print(table)
    rb = result.get("rollback")
    if rb:
        out.print(f"rollback: {rb['strategy']} in {rb['phase']}, verified={rb['ok']}, metrics recovered="
                  f"{rb['metrics_recovered']}", highlight=False)
    t = result.get("timings") or {}
    if "detected_after" in t:
        out.print(f"fault onset → rollback started {t['detected_after']:.2f}s, → completed {t['completed_after']:.2f}s",
                  highlight=False)


@app.command()
def emulator(
    plan: Path | None = typer.Option(None, help="Seed the emulator with this plan's target."),
    port: int = typer.Option(0, help="Port on 127.0.0.1 (0: any free port)."),
    kubeconfig: Path | None = typer.Option(
        None, help="Where to write the kubeconfig (default: a new temporary directory, removed on exit)."),
) -> None:
    """Serve the Kubernetes API emulator in the foreground for kubectl and your own tools."""
    from phasegate.rehearsal.cluster import serve_emulator

    kwargs: dict[str, Any] = {}
    if plan is not None:
        loaded = load_or_exit(plan)
        from phasegate.rehearsal.world import seed_options

        kwargs = seed_options(loaded)
    serve_emulator(str(plan) if plan else None, port, str(kubeconfig) if kubeconfig else None, **kwargs)


def _register_subcommands() -> None:
    from phasegate.entry.alerts import alert_receiver_command
    from phasegate.entry.doctor import checklist_command, doctor_command, rollback_command, run_command
    from phasegate.entry.render_cli import backtest_command, render_app

    app.add_typer(render_app, name="render", help="Render alert rules and a Grafana dashboard from a plan.")
    app.command("backtest")(backtest_command)
    app.command("doctor")(doctor_command)
    app.command("run")(run_command)
    app.command("checklist")(checklist_command)
    app.command("rollback")(rollback_command)
    app.command("alert-receiver")(alert_receiver_command)


_register_subcommands()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()


@app.command("slack-receiver")
def slack_receiver(
    plan: Path = typer.Argument(..., help="Plan YAML file (its Slack approvers map user IDs to names)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; put it behind your ingress, TLS there."),
    port: int = typer.Option(3000, help="Port to serve POST /slack/actions on (the Slack app's Request URL)."),
) -> None:
    """Serve the Slack interactivity endpoint: approval buttons resume the paused run.

    Reads the app's signing secret from SLACK_SIGNING_SECRET; resumes through the Prefect API
    at PREFECT_API_URL. A request Slack did not sign is answered 401 and resumes nothing.
    """
    import os

    loaded = load_or_exit(plan)
    secret = os.environ.get("SLACK_SIGNING_SECRET", "")
    if not secret:
        err.print("SLACK_SIGNING_SECRET is not set: every request would be refused")
        raise typer.Exit(EXIT_BAD_INPUT)
    if loaded.notifications.slack is None or not loaded.notifications.slack.approvers:
        err.print(f"{plan}: notifications.slack.approvers maps no Slack user to an approver")
        raise typer.Exit(EXIT_BAD_INPUT)
    from uuid import UUID

    import uvicorn
    from prefect.flow_runs import resume_flow_run

    from phasegate.adapters.slack_receiver import Receiver

    def resume(run_id: str, data: dict[str, Any]) -> None:
        resume_flow_run(UUID(run_id), run_input=data)

    receiver = Receiver(loaded, secret, resume)
    out.print(f"Slack actions for {loaded.name} at http://{host}:{port}/slack/actions", highlight=False)
    uvicorn.run(receiver.app(), host=host, port=port, log_level="warning", access_log=False)
