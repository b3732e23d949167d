"""Dataflow graphs and their templates: what the translator builds and the scheduler runs."""
