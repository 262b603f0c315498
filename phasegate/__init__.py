"""phasegate: progressive Kubernetes rollouts run as Prefect workflows.

The package root and its core modules (plan, analysis, decide, clock, ports, templates,
judge, notify, measure) are pure: no Prefect, Kubernetes, HTTP or Slack import. The edges
live in ``adapters/``, ``render/``, ``rehearsal/`` and ``cli.py``; an import-linter contract
keeps it so.
"""

__version__ = "0.1.0"
