"""``prefect.yaml``'s build and pull steps: where a deployment's flow run finds phasegate.

A worker starts each flow run in a process of its own and runs the deployment's pull steps
first, to change into the directory that holds ``phasegate/entry/deployments.py`` and the
plans. Prefect's own ``set_working_directory`` with ``{{ $PHASEGATE_HOME }}`` turns an
unset variable into ``""``, changes into the worker's directory, reports success, and the
flow file is then not found. So:

Design decisions:

* ``project_directory`` runs at ``prefect deploy`` time (a build step) and records the
  directory the deployments were created from: the default, so a process worker on the same
  machine needs no setting.
* ``set_working_directory`` runs where the flow runs: ``PHASEGATE_HOME`` there wins (the
  flow image sets it to where it copied the code, ``deployments/k8s/Dockerfile``), else the
  recorded directory. The variable is read here, at run time, not templated into the
  step: Prefect would resolve ``{{ $VAR }}`` at deploy time whenever the deploying shell has
  it set, and bake a laptop's path into a deployment that runs in a pod.
* A directory that does not hold phasegate fails the pull step, naming ``PHASEGATE_HOME``,
  the directory and where it came from, before any flow code is looked for.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "PHASEGATE_HOME"
# The entry point every deployment in prefect.yaml names, relative to the project directory.
ENTRY_FILE = Path("phasegate/entry/deployments.py")


def project_directory() -> dict[str, str]:
    """Build step: the directory ``prefect deploy`` runs in (the project, where prefect.yaml is)."""
    return {"directory": str(Path.cwd().resolve())}


def set_working_directory(created_in: str = "") -> dict[str, str]:
    """Pull step: change into ``$PHASEGATE_HOME`` if set, else the directory the deployment was created from."""
    home = os.environ.get(ENV_HOME, "")
    directory, source = (home, f"{ENV_HOME}") if home else (created_in, "the directory `prefect deploy` ran in")
    if not directory:
        raise RuntimeError(f"{ENV_HOME} is not set and the deployment records no project directory: "
                           f"set {ENV_HOME} to the directory holding {ENTRY_FILE}, or deploy again")
    if not (Path(directory) / ENTRY_FILE).is_file():
        hint = "" if home else f"; set {ENV_HOME} to where phasegate is on this machine"
        raise RuntimeError(f"{directory} ({source}) does not hold {ENTRY_FILE}{hint}")
    os.chdir(directory)
    return {"directory": os.getcwd()}
