"""Exercises and grading: questions as declarations, instant checks, and the grader command.

Nothing in the rest of metalib imports this package.
"""
