"""Hewer: durable task orchestration, wire-compatible with Hatchet."""
