"""Exercises and grading: question specs, instant checks, probes, and the grader command.

Nothing in the rest of metalib imports this package.
"""
