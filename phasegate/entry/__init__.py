"""The entry layer: the ``phasegate`` command, the deployments' entry flows, and the wiring
that builds real adapters from settings (``settings.py``) — the only place that does.

It stands above ``flows/``: it sets the run context (``phasegate.runctx``) and starts flows;
nothing below imports it.
"""
