"""The graded exercise tests grade something: they pass the solutions and fail the stubs.

Runs ``tests/exercises`` in subprocesses, once with ``--target=solutions`` (every graded test
must pass) and once with ``--target=exercises`` (every graded test must fail, with the
exercise's "Exercise N:" message), reading pytest's JUnit XML directly rather than through
``rlhf_edu.grading``, and checks that the manifest of graded tests the package ships
(``rlhf_edu/data/graded_tests.json``) lists exactly the tests pytest collects; then checks
``grade()``, ``format_scores`` and ``run_grade_cli``, and that a misbehaving exercise (endless
loop, endless recursion, megabytes of print, wrong type) gets a failing grade with readable
messages instead of a stuck or flooded run.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rlhf_edu import grading

ROOT = Path(__file__).resolve().parents[1]
GRADED = ROOT / "tests" / "exercises"
MODULES = sorted(p.stem for p in (ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))


def run_graded(target: str, tmp: Path) -> tuple[dict[str, list[tuple[str, str]]], Path]:
    """Run every graded test against ``target``: (test file stem -> [(test, outcome)], the
    JUnit XML report), where outcome is "passed" or the failure/error message."""
    report = tmp / f"{target}.xml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(GRADED), f"--target={target}",
                           f"--junitxml={report}", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    results: dict[str, list[tuple[str, str]]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        stem = (case.get("classname") or case.get("name", "")).split(".")[-1]
        problem = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        outcome = "passed" if problem is None else f"{problem.tag}: {problem.get('message')}"
        results.setdefault(stem, []).append((case.get("name", "?"), outcome))
    return results, report


@pytest.fixture(scope="module")
def graded_reports(tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    tmp = tmp_path_factory.mktemp("graded")
    return {target: run_graded(target, tmp) for target in grading.TARGETS}


@pytest.fixture(scope="module")
def graded_runs(graded_reports) -> dict[str, dict]:
    return {target: results for target, (results, _) in graded_reports.items()}


@pytest.fixture(scope="module")
def graded_rows() -> dict[str, list[dict]]:
    """What grade() returns for every exercise, against the solutions and the stubs."""
    return {t: grading.grade(target=t, root=ROOT, timeout=600) for t in grading.TARGETS}


def test_every_exercise_has_a_solution_and_graded_tests():
    assert len(MODULES) >= 7, MODULES
    for stem in MODULES:
        assert (ROOT / "solutions" / f"{stem}.py").exists(), stem
        assert (GRADED / f"test_{stem}.py").exists(), stem
    assert sorted(p.stem for p in (ROOT / "solutions").glob("ex[0-9][0-9]_*.py")) == MODULES
    assert sorted(p.stem[5:] for p in GRADED.glob("test_ex*.py")) == MODULES


def _functions(path: Path) -> dict[str, str]:
    """Public top-level functions of a module -> their signature, read without importing."""
    tree = ast.parse(path.read_text())
    return {node.name: ast.unparse(node.args) + " -> " + ast.unparse(node.returns or ast.Constant())
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")}


@pytest.mark.parametrize("stem", MODULES)
def test_stubs_and_solutions_define_the_same_functions(stem):
    stubs = _functions(ROOT / "exercises" / f"{stem}.py")
    solved = _functions(ROOT / "solutions" / f"{stem}.py")
    assert stubs and stubs == solved
    number = int(stem[2:4])
    source = (ROOT / "exercises" / f"{stem}.py").read_text()
    for name in stubs:  # each stub raises the exercise's message, inside a YOUR CODE HERE box
        assert re.search(rf'raise NotImplementedError\(\s*"Exercise {number}: ', source), name
    assert source.count("YOUR CODE HERE") == len(stubs)
    # a solution is worked code, not a call into the package it teaches
    tree = ast.parse((ROOT / "solutions" / f"{stem}.py").read_text())
    imported = [n.module if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                for a in n.names]
    assert not [m for m in imported if m and m.split(".")[0] == "rlhf_edu"], imported


def test_solutions_pass_every_graded_test(graded_runs):
    results = graded_runs["solutions"]
    assert sorted(results) == [f"test_{m}" for m in MODULES]
    failed = [(f, t, o) for f, cases in results.items() for t, o in cases if o != "passed"]
    assert not failed, failed
    assert sum(len(c) for c in results.values()) >= 60


def test_stubs_fail_every_graded_test_with_the_exercise_message(graded_runs):
    results = graded_runs["exercises"]
    assert sorted(results) == [f"test_{m}" for m in MODULES]
    for stem, cases in results.items():
        number = int(stem[len("test_ex"):len("test_ex") + 2])
        assert len(cases) == len(graded_runs["solutions"][stem])
        for test, outcome in cases:
            assert outcome != "passed", f"{stem}::{test} passes on the unsolved stubs"
            assert f"Exercise {number}:" in outcome, f"{stem}::{test}: {outcome}"


def test_the_manifest_lists_every_graded_test(graded_runs):
    """The total each exercise is graded out of is the manifest's; it must name exactly the
    tests pytest collects from each graded test file, in order."""
    manifest = grading.graded_tests()
    collected = {stem[len("test_"):]: [name for name, _ in cases]
                 for stem, cases in graded_runs["solutions"].items()}
    assert collected == manifest, ("rlhf_edu/data/graded_tests.json is out of date; it should "
                                   "be:\n" + json.dumps(collected, indent=1))
    for stem, cases in graded_runs["exercises"].items():
        assert [name for name, _ in cases] == manifest[stem[len("test_"):]], stem


def _load_graded_module(name: str):
    sys.path.insert(0, str(GRADED))
    try:
        spec = importlib.util.spec_from_file_location(f"_graded_{name}", GRADED / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(GRADED))


def test_recorded_beta_runs_are_labelled_by_the_gold_rule():
    """The labels Exercise 7 is graded on follow record_beta_runs.py's documented rule."""
    spec = importlib.util.spec_from_file_location(
        "_record_beta_runs", GRADED / "data" / "record_beta_runs.py")
    record = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(record)
    runs = json.loads((GRADED / "data" / "beta_runs.json").read_text())["runs"]
    labels = {r["label"] for r in runs.values()}
    assert labels == {"too_low", "too_high", "ok"}
    for name, run in runs.items():
        assert record.label_from_gold(run["history"]) == run["label"], name
        assert not any(k.startswith("time_") for m in run["history"] for k in m), name
    demos = json.loads((ROOT / "rlhf_edu" / "data" / "demos.json").read_text())["runs"]
    test_ex07 = _load_graded_module("test_ex07_choose_beta")
    for name, label in test_ex07.DEMO_LABELS.items():
        assert record.label_from_gold(demos[name]) == label, name


# ------------------------------------------------------------------ rlhf_edu.grading


def test_grade_rows(graded_rows):
    solved, stubs = graded_rows["solutions"], graded_rows["exercises"]
    assert [r["exercise"] for r in solved] == [int(m[2:4]) for m in MODULES]
    for sol, stub in zip(solved, stubs):
        assert sol["total"] > 0 and sol["passed"] == sol["total"], sol
        assert sol["failures"] == [] and sol["error"] is None
        assert stub["total"] == sol["total"] and stub["passed"] == 0
        assert len(stub["failures"]) == stub["total"]
        assert all(f["message"].startswith(f"Exercise {stub['exercise']}: ")
                   for f in stub["failures"]), stub["failures"]
    text = grading.format_scores(stubs)
    assert f"0 / {sum(r['total'] for r in stubs)}" in text.splitlines()[-1]


def test_grade_rejects_bad_arguments(tmp_path):
    course = ", ".join(str(int(m[2:4])) for m in MODULES)
    with pytest.raises(ValueError, match=f"^no exercise 99; the exercises are {course}$"):
        grading.grade(99, root=ROOT)
    with pytest.raises(ValueError, match="target must be one of"):
        grading.grade(3, target="answers")
    with pytest.raises(ValueError, match="no exercises/ and tests/exercises/"):
        grading.grade(root=tmp_path)


def test_find_root_from_a_subdirectory(monkeypatch):
    monkeypatch.chdir(ROOT / "tests" / "exercises")
    assert grading.find_root() == ROOT
    assert sorted(grading.graded_files()) == [int(m[2:4]) for m in MODULES]


def test_format_scores():
    rows = [
        {"exercise": 2, "name": "ex02_kl_reward", "file": "tests/exercises/test_ex02.py",
         "target": "exercises", "passed": 13, "total": 13, "seconds": 1.0, "failures": [],
         "error": None},
        {"exercise": 3, "name": "ex03_gae", "file": "tests/exercises/test_ex03_gae.py",
         "target": "exercises", "passed": 4, "total": 9, "seconds": 1.0,
         "failures": [{"test": "test_padding", "message": "returns[1, 3] is 0.3 but should be 0:"
                       " that position is padding"},
                      {"test": "test_lambda", "message": "advantages[0, 2] is wrong"}],
         "error": None},
    ]
    text = grading.format_scores(rows)
    lines = text.splitlines()
    assert "grading exercises/" in lines[0]
    assert re.search(r"2\s+ex02_kl_reward\s+13 / 13\s+done", text)
    assert re.search(r"3\s+ex03_gae\s+4 / 9", text)
    assert "test_padding: returns[1, 3] is 0.3 but should be 0: that position is padding" in text
    assert "advantages[0, 2]" not in text and "and 1 more failing test" in text
    assert re.search(r"total\s+17 / 22$", lines[-1])
    assert "advantages[0, 2] is wrong" in grading.format_scores(rows, failures=5)
    notes = [line for line in grading.format_scores(rows, width=40).splitlines()
             if line.startswith("     | ")]  # what the tests said: wrapped, marked as theirs
    assert len(notes) > 2 and all(len(line) <= 40 for line in notes), notes


def test_run_grade_cli(monkeypatch, capsys, graded_rows):
    parser = argparse.ArgumentParser()
    grading.add_grade_arguments(parser)
    args = parser.parse_args(["5", "--target", "solutions"])
    assert (args.exercise, args.target, args.root) == (["5"], "solutions", None)
    for target, code in (("solutions", 0), ("exercises", 1)):
        monkeypatch.setattr(grading, "grade", lambda *a, t=target, **k: graded_rows[t][4:5])
        assert grading.run_grade_cli(parser.parse_args(["5", "--target", target])) == code
        out = capsys.readouterr().out
        assert "ex05_reward_model_loss" in out and "total" in out
    monkeypatch.undo()
    assert grading.run_grade_cli(parser.parse_args(["--root", "/nonexistent"])) == 2
    assert "error:" in capsys.readouterr().err


BAD_EX05 = '''
def preference_probability(r_chosen, r_rejected):
    return preference_probability(r_chosen, r_rejected)  # recurses forever


def bradley_terry_loss(r_chosen, r_rejected):
    while True:  # never returns
        pass


def pairwise_accuracy(r_chosen, r_rejected):
    print("debug " * 2_000_000)  # 12 MB of output
    return "most of them"  # not a float
'''


def test_misbehaving_exercise_gets_a_readable_failing_grade(tmp_path, monkeypatch):
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    shutil.copytree(GRADED, tmp_path / "tests" / "exercises",
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "exercises").mkdir()
    (tmp_path / "exercises" / "__init__.py").write_text("")
    (tmp_path / "exercises" / "ex05_reward_model_loss.py").write_text(BAD_EX05)
    monkeypatch.setenv("RLHF_EDU_GRADE_TIMEOUT", "0.5")
    (row,) = grading.grade(5, root=tmp_path, timeout=300)
    assert row["error"] is None and row["total"] > 0 and row["passed"] == 0
    messages = {f["test"]: f["message"] for f in row["failures"]}
    assert "recursed without end" in messages["test_preference_probability"]
    assert "Timeout" in messages["test_loss_hand_made"]
    assert "should return a Python float" in messages["test_pairwise_accuracy"]
    assert all(len(m) < 1000 for m in messages.values())
    assert "recursed without end" in grading.format_scores([row], failures=10)


def test_printed_output_is_cut(capsys):
    """A learner's print in a loop keeps its first 2,000 characters, not megabytes."""
    harness = _load_graded_module("conftest")

    def chatty() -> int:
        for _ in range(100_000):
            print("debug line")
        return 7

    assert harness._guarded(chatty, "chatty")() == 7
    out = capsys.readouterr().out
    assert out.startswith("debug line\n") and len(out) < 3000
    assert "more characters printed by chatty were cut" in out


def test_grade_signature():
    params = inspect.signature(grading.grade).parameters
    assert list(params)[:3] == ["exercise", "target", "root"]
    assert params["target"].default == "exercises"
