"""Trainers: one file per stage, each composing the shared loop with its losses and data."""
