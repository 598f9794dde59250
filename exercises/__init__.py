"""Exercises of the RLHF course: fill in each ``YOUR CODE HERE`` box.

Grade one with ``rlhf-edu grade N`` or ``pytest tests/exercises/test_exNN_*.py``; the worked
solutions are in ``solutions/`` (same file names).
"""
