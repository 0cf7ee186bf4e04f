"""Corral: run a fleet of services from one manifest and keep them healthy, routed, observed
and their data safe."""

__version__ = "0.1.0"
