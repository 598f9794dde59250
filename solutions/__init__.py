"""Worked solutions of the exercises in ``exercises/`` (same file and function names).

Check them with ``rlhf-edu grade --target solutions`` or
``pytest tests/exercises --target=solutions``.
"""
