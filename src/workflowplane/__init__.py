"""OpenChoreo-compatible WorkflowPlane: API, controller, gateway, agent, workflow runs."""

__version__ = "0.1.0"
