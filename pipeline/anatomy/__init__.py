"""Anatomy: body and skin, organ assignment, distances to structures that matter for safety."""
