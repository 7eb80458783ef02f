"""OpenChoreo-compatible WorkflowPlane: API, controller, cluster gateway and agent, workflow runs."""

__version__ = "0.1.0"
