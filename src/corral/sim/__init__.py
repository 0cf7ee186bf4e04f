"""Deterministic simulation of Corral's pure cores (`python -m corral.sim ENGINE --seed N`)."""
