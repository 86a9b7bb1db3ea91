"""The grader: scores and reasons, survival of hostile submissions, untouched inputs, repeatability.

Everything runs on a fixture exercise written to a temporary tests folder (``99_add``: q1
``add(a, b)``, 2 points, 2 visible + 2 hidden cases; q2 ``scale(x, k)``, 1 point, 1 + 1), so these
tests do not depend on the course's exercises; one test grades the real solutions and exercises
when they exist. The submissions, one per behaviour the issue lists, are graded in one batch
(``batch`` fixture, marked slow). The three that attack the grader's machine (deleter, reader,
escaper) run only where the sandbox can stop them (a private file system or a uid switch; the
first line of the grader's output says which); ``test_isolation_modes`` runs them again as root
without a mount namespace (like Docker) and as a plain user in a user namespace. The reader also
looks for the repository's own ``hidden_tests/`` (by metalib's path, and climbing with ``..``
from every folder it holds open): it must read them exactly where any user of the machine may.
Run from a clone in a 0700 folder, these tests check that the grader works there too (the
course's Python bound back, or shown through a view of links, and nothing else of that folder).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
import torch

from conftest import ROOT
from metalib.grading import __main__ as cli
from metalib.grading import grader, launch, lockdown, registry, scores, view
from metalib.grading.question import Exercise, Question, case, given

AS_ROOT = sys.platform.startswith("linux") and os.geteuid() == 0
ATTACKS = ("deleter", "reader", "escaper")  # what a weak sandbox would let do real damage
SECRET = "SECRET-7f3a-only-in-the-tests-folder"
SLEEP_MARK = "987654.25"  # argv of the process the escaper leaves behind
# The whole notebook's limit is wall-clock time; each check's is CPU time, tried twice, with a
# wall-clock backstop of WALL_FACTOR (4) times it. A check that loops for good (function_loop)
# costs 2 x 2 s of CPU, which on a loaded 2-core CI machine took past a 10 s notebook limit (the
# question after it then scored 0): the notebook's limit leaves room for a slow interpreter start.
TIMEOUT, CASE_TIMEOUT, MEMORY_MB = 20, 2, 1536

FIXTURE = f'''
"""Fixture exercise 99_add for the grader's tests. {SECRET}"""

import torch

from metalib.grading.question import Exercise, Mistake, Question, case, given


def add(a, b):
    return a + b


def scale(x, k):
    return x * k


def _add(label, a, b):
    return case(label, a=torch.tensor(a), b=torch.tensor(b))


EXERCISE = Exercise(
    "99_add",
    (
        Question("q1", "add", 2, given, reference=add, title="add two tensors",
                 mistakes=(Mistake("subtracted b instead of adding it", lambda a, b: a - b),),
                 visible=(_add("1 + 2", [1.0], [2.0]), _add("rows", [[1.0, 2.0]], [[3.0, 4.0]]))),
        Question("q2", "scale", 1, given, reference=scale, title="scale a tensor",
                 mistakes=(Mistake("added k instead of multiplying by it", lambda x, k: x + k),),
                 visible=(case("x 3", x=torch.tensor([1.0, 2.0]), k=3.0),)),
    ),
)
HIDDEN = {{
    "q1": [_add("negative", [-3.0], [1.0]), _add("halves", [0.5], [0.25])],
    "q2": [case("x -1", x=torch.tensor([4.0]), k=-1.0)],
}}
'''

ADD = "def add(a, b):\n    return a + b"
OPTIMIZER_USER = """
import torch
def add(a, b):
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.5)
    (w - 1).square().sum().backward()
    opt.step()
    return a + b + 0 * w.detach()
"""
SCALE = "def scale(x, k):\n    return x * k"
CORRECT = ("import torch", ADD, 'check("q1", add);', SCALE, 'check("q2", scale)')

# The deleter looks for notebooks where a real attack would (its folder, its parents, /tmp) but
# only touches what lies in this test's own folder (BASE) or its own scratch folder: if the
# sandbox ever fails, the damage stays in the test's temporary directory.
DELETER = """
import os, pathlib
cwd = pathlib.Path.cwd()
mine = [pathlib.Path(BASE), cwd] + ([cwd.parent] if cwd.parent.name.startswith("metalib-") else [])
found = {pathlib.Path(ORIGINAL), *pathlib.Path(BASE).rglob("*"), *cwd.rglob("*")}
for parent in cwd.parents:
    found.update(parent.glob("*.ipynb"))
found.update(pathlib.Path("/tmp").rglob("*.ipynb"))
targets = [p for p in found if any(p == m or m in p.parents for m in mine)]
hits = 0
for t in sorted(targets, key=str):
    for attempt in (lambda: t.write_text("{}"), t.unlink, lambda: os.utime(t, (0, 0))):
        try:
            attempt()
            hits += 1
        except Exception:
            pass
print("deleter touched", hits, "of", len(targets), "files")
"""

READER = """
import glob
folders = {TESTS}
for cmdline in glob.glob("/proc/*/cmdline"):  # the grader's command line names its tests folder
    try:
        argv = open(cmdline, "rb").read().decode(errors="replace").split("\\0")
    except OSError:
        continue
    if "--tests" in argv[:-1]:
        folders.add(argv[argv.index("--tests") + 1])
found = []
for folder in sorted(folders):
    for path in glob.glob(folder + "/*"):
        try:
            text = open(path, errors="replace").read()
        except OSError as err:
            print("reader:", err)
            continue
        if "SECRET" in text:
            found.append(text)
print("reader found", found)

# The course's own hidden_tests/, beside the metalib package: by its real path, beside the
# package's search path (a view of it, where there is one), and climbing from every folder the
# process holds open (/proc/self/fd/N/.. leads to a folder's parents whatever their modes).
import os, pathlib, metalib
routes = {pathlib.Path(metalib.__file__).parents[1] / "hidden_tests"}
routes.update(pathlib.Path(p).parent / "hidden_tests" for p in metalib.__path__)
for fd in os.listdir("/proc/self/fd"):
    if os.path.isdir(f"/proc/self/fd/{fd}"):
        routes.update(pathlib.Path(f"/proc/self/fd/{fd}" + "/.." * up) / "hidden_tests"
                      for up in range(1, 10))
course = set()
for route in routes:
    try:
        course.update(p.name for p in route.glob("ex*.py") if "HIDDEN" in p.read_text())
    except OSError:
        pass
print("reader read the course's hidden tests:", sorted(course))

def add(a, b):
    text = " ".join(found)[:2000] or "nothing readable"
    raise RuntimeError(f"{text}; course hidden tests read: {len(course)}")
"""

MONKEYPATCHER = """
import builtins, sys, torch, torch.testing
import metalib.grading.feedback as feedback, metalib.grading.question as question
torch.testing.assert_close = lambda *a, **k: None
torch.equal = lambda *a, **k: True
torch.Tensor.__eq__ = lambda self, other: torch.tensor(True)
torch.Tensor.__add__ = torch.Tensor.__sub__  # the "reference" a + b now agrees with a - b
torch.add = torch.sub
import metalib.tasks
metalib.tasks.sample_episodes = lambda *a, **k: None
feedback.check = lambda *a, **k: True
feedback.run_case = lambda *a, **k: None
question.Question.judge = lambda *a, **k: None
question.Question.diagnose = lambda *a, **k: (None, None)
question.difference = lambda *a, **k: None
for name in list(sys.modules):
    if "99_add" in name or "hidden" in name:
        setattr(sys.modules[name], "judge_add", lambda *a, **k: None)
def add(a, b):
    return a - b
def scale(x, k):
    return x + k
"""

FORGER = """
import os
for fd in range(3, 64):
    try:
        os.write(fd, b"\\x00\\x00\\x00\\x10" + b"not a torch file")
    except OSError:
        pass
"""

ESCAPER = f"""
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "{SLEEP_MARK}"])
    os._exit(0)
"""

STUBBORN = """
import time
while True:
    try:
        time.sleep(0.05)
    except BaseException:
        pass
"""


def submissions(original_dir: Path, tests_dir: Path) -> dict[str, tuple[str, ...] | bytes]:
    """name -> code cells (or raw bytes): each behaviour of the issue's list, and plain ones."""
    where = (
        f"ORIGINAL = {str(original_dir / 'deleter.ipynb')!r}\nTESTS = {str(tests_dir)!r}\n"
        f"BASE = {str(original_dir.parent)!r}\n"
    )
    return {
        "correct": CORRECT,
        "partial": (
            "import torch",
            "def add(a, b):\n    return (a + b).abs()",
            "def scale(x, k):\n    return x * k + 1",
        ),
        "blank": (
            "def add(a, b):\n    raise NotImplementedError('add a and b')",
            "def scale(x, k):\n    raise NotImplementedError",
        ),
        "syntax_error": ("import torch", "def add(a, b)\n    return a + b", SCALE),
        "top_exception": (ADD, "raise RuntimeError('boom at top level')\n" + SCALE),
        "cell_loop": ("while True:\n    pass", ADD, SCALE),
        "function_loop": ("def add(a, b):\n    while True:\n        pass", SCALE),
        "stubborn_loop": (ADD, SCALE, STUBBORN),
        "sys_exit": (
            "import sys\nsys.exit('bye')",
            ADD,
            "import sys\ndef scale(x, k):\n    sys.exit(1)",
        ),
        "os_exit": (ADD, SCALE, "import os\nos._exit(0)"),
        "memory_hog": (
            "import torch\nhog = torch.ones(2**31)",
            ADD,
            "def scale(x, k):\n    chunks = []\n    while True:\n"
            "        chunks.append(bytearray(200_000_000))",
        ),
        # The first torch.optim optimizer imports torch._dynamo (and ctypes.wintypes) lazily:
        # after the switch to an unprivileged user, from a Python the user cannot read.
        "optimizer_user": (OPTIMIZER_USER, SCALE),
        "huge_output": ("for _ in range(50):\n    print('x' * 1_000_000)", ADD, SCALE),
        "deleter": (where + DELETER, ADD, SCALE),
        "reader": (where + READER, SCALE),
        "monkeypatcher": (MONKEYPATCHER,),
        "forger": (ADD, SCALE, FORGER),
        "escaper": (ESCAPER, ADD, SCALE),
        "no_metadata_99_add": CORRECT,
        "mystery": CORRECT,
        "garbage_99_add": b"\x00\x01 this is not JSON",
    }


def notebook(cells: tuple[str, ...], exercise: str | None = "99_add") -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Exercise 99")]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    if exercise:
        nb.metadata["workbook"] = {"exercise": exercise}
    return nbformat.writes(nb)


@functools.cache
def strong_sandbox() -> bool:
    """Whether the sandbox here keeps a notebook off the grader's files (see the notes)."""
    notes = grader.preflight(sys.executable, launch.Limits(memory_mb=MEMORY_MB), [])
    return any(n.startswith(("private file system", "runs as unused uid")) for n in notes)


needs_strong = pytest.mark.skipif(
    "not strong_sandbox()", reason="this sandbox (a user without namespaces) cannot stop attacks"
)


def write_submissions(folder: Path, tests_dir: Path, names=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, cells in submissions(folder, tests_dir).items():
        if names is not None and name not in names:
            continue
        if isinstance(cells, bytes):
            (folder / f"{name}.ipynb").write_bytes(cells)
        else:
            exercise = None if name in ("no_metadata_99_add", "mystery") else "99_add"
            (folder / f"{name}.ipynb").write_text(notebook(cells, exercise))


def write_tests(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ex99_add.py").write_text(FIXTURE)
    return folder


def snapshot(*folders: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p): (p.read_bytes(), p.stat().st_mtime_ns)
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def grade_cli(*args: str, wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "metalib.grading", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def limits_args() -> list[str]:
    return [
        f"--timeout={TIMEOUT}",
        f"--cell-timeout={CASE_TIMEOUT}",
        f"--case-timeout={CASE_TIMEOUT}",
        f"--memory-mb={MEMORY_MB}",
        "--jobs=2",
    ]


def results(out: Path, name: str) -> dict:
    return json.loads((out / name / "results.json").read_text())


def without_time(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "execution_time"}


def sleepers() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.isdigit() and SLEEP_MARK.encode() in argv:
            found.append(int(entry))
    return found


def kill_sleepers() -> list[int]:
    """Kill what the escaper left behind (a weak sandbox cannot); return their pids."""
    found = sleepers()
    for pid in found:
        os.kill(pid, 9)
    return found


def grade_folder(base: Path, names=None, wrapper=()) -> dict:
    """Write submissions under ``base``, grade them; report results, time, damage, leftovers."""
    tests_dir = write_tests(base / "tests")
    subs = base / "submissions"
    write_submissions(subs, tests_dir, names)
    before = snapshot(subs, tests_dir)
    out = base / "out"
    start = time.monotonic()
    done = grade_cli(
        str(subs), "--out", str(out), "--tests", str(tests_dir), *limits_args(), wrapper=wrapper
    )
    return {
        "out": out,
        "done": done,
        "seconds": time.monotonic() - start,
        "unchanged": before == snapshot(subs, tests_dir),
        "leftovers": kill_sleepers(),
    }


SLOW_IMPORTS = ("optimizer_user",)  # graded with more time than the batch's 2 s per check


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Every fixture submission graded in one run (the attacks only where they can be stopped)."""
    names = [n for n in submissions(Path("."), Path(".")) if strong_sandbox() or n not in ATTACKS]
    names = [n for n in names if n not in SLOW_IMPORTS]
    return {**grade_folder(tmp_path_factory.mktemp("grading"), names), "names": names}


def question(result: dict, name: str) -> list[dict]:
    """A question's Gradescope tests: its visible cases', then its hidden cases' (if any)."""
    return [t for t in result["tests"] if t["name"].startswith(name + ":")]


def points(result: dict) -> tuple[float, float]:
    return tuple(round(sum(t["score"] for t in question(result, q)), 4) for q in ("q1", "q2"))


# ------------------------------------------------------------------------ the batch (slow)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.slow
def test_batch_runs_to_the_end_and_exits_zero(batch):
    done = batch["done"]
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("sandbox: ")
    graded = [ln for ln in lines if ".ipynb: " in ln]
    assert len(graded) == len(batch["names"]), done.stdout
    rows = list(csv.DictReader((batch["out"] / "scores.csv").open()))
    assert list(rows[0]) == ["submission", "exercise", "q1", "q2", "total", "max"]
    assert {"correct", "stubborn_loop", "garbage_99_add", "mystery"} <= {
        r["submission"] for r in rows
    }
    assert len(rows) == len(batch["names"])  # one row per submission
    correct = next(r for r in rows if r["submission"] == "correct")
    assert correct == {
        "submission": "correct",
        "exercise": "99_add",
        "q1": "2",
        "q2": "1",
        "total": "3",
        "max": "3",
    }
    mystery = next(r for r in rows if r["submission"] == "mystery")
    assert (mystery["exercise"], mystery["q1"], mystery["total"]) == ("", "", "0")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, q1, q2, reason",
    [
        ("correct", 2.0, 1.0, None),
        (
            "partial",
            1.5,
            0.0,
            "negative (hidden check): the result at index [0]: expected -2, got 2",
        ),
        ("blank", 0.0, 0.0, "not answered yet (add a and b)"),
        ("syntax_error", 0.0, 1.0, "SyntaxError"),
        ("top_exception", 2.0, 0.0, "RuntimeError: boom at top level"),
        ("cell_loop", 2.0, 1.0, "Cell 2 (while True:): stopped after 2 s"),
        ("function_loop", 0.0, 1.0, "2 more checks not run: an earlier check of add did not"),
        (
            "stubborn_loop",
            0.0,
            0.0,
            f"did not finish within {TIMEOUT} s (stopped while running cell 4)",
        ),
        ("sys_exit", 2.0, 0.0, "raised SystemExit: 1"),
        ("os_exit", 0.0, 0.0, "process ended while running cell 4 (exit 0)"),
        # On a loaded machine the hog may meet the check's time limit before the memory limit.
        ("memory_hog", 2.0, 0.0, ("raised MemoryError", "did not finish within")),
        ("huge_output", 2.0, 1.0, None),
        ("deleter", 2.0, 1.0, None),
        ("reader", 0.0, 1.0, "raised RuntimeError"),
        ("monkeypatcher", 0.0, 0.0, "the result at index [0]: expected 3, got -1"),
        ("forger", 0.0, 0.0, "could not read the notebook's answers"),
        ("escaper", 2.0, 1.0, None),
        ("no_metadata_99_add", 2.0, 1.0, "from the file name"),
    ],
)
def test_scores_and_reasons(batch, name, q1, q2, reason):
    if name not in batch["names"]:
        pytest.skip("this sandbox (a user without namespaces) cannot stop this attack")
    result = results(batch["out"], name)
    assert points(result) == (q1, q2), json.dumps(result, indent=1)
    assert result["score"] == q1 + q2 and result["max_score"] == 3.0
    text = json.dumps(result)
    reasons = (reason,) if isinstance(reason, str) else reason or ()
    if reasons:
        assert any(r in text for r in reasons), json.dumps(result, indent=1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["as it comes", "root without a mount namespace, as in Docker"])
def test_modules_imported_after_the_uid_switch(tmp_path, mode):
    """The first torch.optim optimizer imports torch._dynamo (and ctypes.wintypes) lazily, after
    the sandbox became an unprivileged user: from the course's Python, wherever it lies (bound
    back, or through a view of links). That import takes 1.5 s or more on a loaded 2-core
    machine, so it gets more than the batch's 2 s here."""
    wrapper = MODES.get(mode, ())
    if wrapper and not AS_ROOT:
        pytest.skip("simulating the other kinds of grader needs root")
    if wrapper and (
        shutil.which(wrapper[0]) is None or subprocess.run([*wrapper, "true"]).returncode
    ):
        pytest.skip(f"{wrapper[0]} cannot simulate this here")
    tests_dir = write_tests(tmp_path / "tests")
    write_submissions(tmp_path / "subs", tests_dir, SLOW_IMPORTS)
    out = tmp_path / "out"
    slow = ("--timeout=120", "--cell-timeout=60", "--case-timeout=30", f"--memory-mb={MEMORY_MB}")
    args = (str(tmp_path / "subs"), "--out", str(out), "--tests", str(tests_dir), *slow)
    done = grade_cli(*args, wrapper=wrapper)
    assert done.returncode == 0, done.stdout + done.stderr
    result = results(out, "optimizer_user")
    assert points(result) == (2.0, 1.0), json.dumps(result, indent=1)


@pytest.mark.slow
def test_unknown_exercise_and_garbage_score_zero_with_a_reason(batch):
    mystery = results(batch["out"], "mystery")
    assert mystery["score"] == 0 and mystery["tests"] == []
    assert "could not tell which exercise" in mystery["output"]
    garbage = results(batch["out"], "garbage_99_add")
    assert garbage["score"] == 0 and garbage["max_score"] == 3.0
    assert "not a notebook" in garbage["output"]


@pytest.mark.slow
def test_every_input_file_is_unchanged(batch):
    assert batch["unchanged"]


@pytest.mark.slow
def test_huge_output_is_capped_in_the_log(batch):
    log = (batch["out"] / "huge_output" / "log.txt").read_bytes()
    assert 60_000 < len(log) < 70_000 + 2_000


def course_tests_readable(sandbox: str) -> bool:
    """Whether a sandbox (its notes) may read the repository's own hidden_tests/: only without
    a private file system, and only where every user of the machine may read them."""
    folder = registry.default_tests_dir()
    if folder is None or "no private file system" not in sandbox:
        return False
    return grader.readable_by_others(folder)


def assert_reader_read(result: dict, sandbox: str) -> None:
    """The reader read no secret, and the course's hidden tests exactly where any user may."""
    text = json.dumps(result)
    assert "nothing readable" in text, json.dumps(result, indent=1)
    assert ("course hidden tests read: 0" in text) != course_tests_readable(sandbox), text


@pytest.mark.slow
@needs_strong
def test_hidden_tests_stay_out_of_sight(batch):
    for name in ("reader", "deleter"):
        folder = batch["out"] / name
        assert SECRET not in (folder / "results.json").read_text()
        assert SECRET not in (folder / "log.txt").read_text()
    assert_reader_read(results(batch["out"], "reader"), batch["done"].stdout.splitlines()[0])


@pytest.mark.slow
@needs_strong
def test_processes_a_submission_starts_do_not_outlive_it(batch):
    assert batch["leftovers"] == []


@pytest.mark.slow
def test_grading_twice_gives_identical_results(batch, tmp_path):
    names = ("correct", "partial", "blank", "syntax_error", "monkeypatcher", "memory_hog")
    tests_dir = write_tests(tmp_path / "tests")
    write_submissions(tmp_path / "again", tests_dir, names)
    out = tmp_path / "out"
    done = grade_cli(
        str(tmp_path / "again"), "--out", str(out), "--tests", str(tests_dir), *limits_args()
    )
    assert done.returncode == 0, done.stderr
    for name in names:
        again, first = without_time(results(out, name)), without_time(results(batch["out"], name))
        if name != "memory_hog":
            assert again == first
            continue
        # The hog races two limits, memory and the case's wall-clock seconds (seen in a CI run:
        # one grading said "raised MemoryError", the other "did not finish within 2 s"); the
        # score is the same either way, and the feedback names one of the two.
        scores = [[t["score"] for t in r["tests"]] + [r["score"]] for r in (again, first)]
        assert scores[0] == scores[1]
        for r in (again, first):
            output = " ".join(t["output"] for t in question(r, "q2"))
            assert "raised MemoryError" in output or "did not finish within" in output, output


MODES = {
    "root without a mount namespace, as in Docker": ("setpriv", "--bounding-set=-sys_admin"),
    "a user in a user namespace": ("unshare", "--map-user=1000", "--map-group=1000"),
}


@pytest.mark.slow
@pytest.mark.skipif(not AS_ROOT, reason="simulating the other kinds of grader needs root")
@pytest.mark.parametrize("mode", MODES)
def test_isolation_modes(tmp_path, mode):
    """The attacks fail too where the grader has no mount namespace, or is not root."""
    wrapper = MODES[mode]
    if shutil.which(wrapper[0]) is None or subprocess.run([*wrapper, "true"]).returncode:
        pytest.skip(f"{wrapper[0]} cannot simulate this here")
    graded = grade_folder(tmp_path, ("correct", *ATTACKS), wrapper)
    done, out = graded["done"], graded["out"]
    assert done.returncode == 0, done.stdout + done.stderr
    sandbox = done.stdout.splitlines()[0]
    if wrapper[0] == "setpriv":
        assert "no private file system" in sandbox and "runs as unused uid" in sandbox
        # The course's Python in a private folder (a clone in `mktemp -d`, pyenv under /root):
        # read through a view of hard links.
        folders, _ = view.needed_by(sys.executable, launch.sandbox_env(tmp_path))
        private = [f for f in folders if not lockdown.reachable(f, launch.UNUSED_UID)]
        assert ("read through a view of hard links" in sandbox) == bool(private), sandbox
    else:
        assert "private file system: read-only" in sandbox and "without capabilities" in sandbox
    assert graded["unchanged"] and graded["leftovers"] == []
    for name in ("correct", "deleter", "escaper"):
        assert points(results(out, name)) == (2.0, 1.0), name
    reader = results(out, "reader")
    assert points(reader) == (0.0, 1.0)
    assert_reader_read(reader, sandbox)
    assert SECRET not in (out / "reader" / "log.txt").read_text()
    if course_tests_readable(sandbox):  # as documented: the instructor is told to chmod them
        assert f"chmod -R go-rwx {registry.default_tests_dir()}" in done.stderr


# ------------------------------------------------------------------------ fast tests


def test_preflight_names_what_is_missing(tmp_path):
    """A sandbox Python without torch: a clear message and a non-zero exit, nobody scored 0."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    write_tests(tmp_path / "tests")
    sub = tmp_path / "correct_99_add.ipynb"
    sub.write_text(notebook(CORRECT))
    out = tmp_path / "out"
    code = cli.main(
        [
            str(sub),
            "--out",
            str(out),
            "--tests",
            str(tmp_path / "tests"),
            "--python",
            str(bare / "bin" / "python"),
        ]
    )
    assert code == 1
    assert not (out / "correct_99_add").exists()


def test_preflight_message(tmp_path, capsys):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    with pytest.raises(RuntimeError, match=r"cannot import what grading needs:\n  torch: Module"):
        grader.preflight(str(bare / "bin" / "python"), launch.Limits(), [])
    with pytest.raises(RuntimeError, match="pip install -r requirements.lock"):
        grader.preflight(str(bare / "bin" / "python"), launch.Limits(), [])
    with pytest.raises(RuntimeError, match="cannot start the sandbox's Python"):
        grader.preflight(str(tmp_path / "no-such-python"), launch.Limits(), [])


def test_bad_arguments_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main([str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no notebook" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "missing.ipynb"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hi")
    assert cli.main([str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(empty)])  # no --out
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main([str(empty), "--out", "o", "--timeout", "0"])
    (empty / "a.ipynb").write_text(notebook(CORRECT))
    write_tests(tmp_path / "tests")
    code = cli.main(
        [
            str(empty),
            "--out",
            str(tmp_path / "o"),
            "--tests",
            str(tmp_path / "tests"),
            "--exercise",
            "nope",
        ]
    )
    assert code == 2
    assert "not a known exercise" in capsys.readouterr().err


def test_broken_tests_folder_exit_1(tmp_path, capsys):
    (tmp_path / "sub.ipynb").write_text(notebook(CORRECT))
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    (tests_dir / "helpers.py").write_text("X = 1\n")
    code = cli.main(
        [str(tmp_path / "sub.ipynb"), "--out", str(tmp_path / "o"), "--tests", str(tests_dir)]
    )
    assert code == 1
    assert "name the file exNN_topic.py" in capsys.readouterr().err


def test_registry_loads_the_fixture_and_merges_hidden_cases(tmp_path):
    exercises = registry.load_exercises(write_tests(tmp_path / "tests"))
    q1 = exercises["99_add"].question("q1")
    assert [c.label for c in q1.hidden] == ["negative", "halves"]
    assert len(q1.visible) == 2


def test_registry_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        registry.load_tests(tmp_path / "nowhere")
    (tmp_path / "ex98_other.py").write_text("HIDDEN = {'q1': []}\n")
    with pytest.raises(ValueError, match="unknown exercise '98_other'"):
        registry.load_exercises(tmp_path)
    (tmp_path / "ex98_other.py").write_text("HIDDEN = [1]\n")
    with pytest.raises(ValueError, match="HIDDEN must be a dict"):
        registry.load_tests(tmp_path)
    (tmp_path / "ex98_other.py").write_text("EXERCISE = 3\n")
    with pytest.raises(ValueError, match="EXERCISE must be an Exercise"):
        registry.load_tests(tmp_path)
    exercise = _tiny_exercise()
    with pytest.raises(ValueError, match="has no question 'q9'"):
        registry.merge_hidden(exercise, {"q9": []})
    with pytest.raises(ValueError, match="must be a list of Case"):
        registry.merge_hidden(exercise, {"q1": ["not a case"]})
    odd = Exercise(
        "odd", (Question("q1", "f", 1, given, check=_never, visible=(case("obj", x=object()),)),)
    )
    with pytest.raises(ValueError, match="kwargs must be plain data"):
        registry.check_plain(odd)


def _never(spec, got, want):
    return "never"


def _tiny_exercise() -> Exercise:
    return Exercise(
        "98_tiny", (Question("q1", "f", 2, given, check=_never, visible=(case("a", x=1),)),)
    )


def test_identify_order_metadata_then_option_then_file_name():
    known = {"00_tasks": _tiny_exercise(), "01_finetuning": _tiny_exercise()}
    ex, how = registry.identify("01_finetuning", "00_tasks", known, "00_tasks")
    assert ex is known["01_finetuning"] and "metadata" in how
    ex, how = registry.identify("99_nope", "00_tasks", known)
    assert ex is None and "not known" in how
    ex, how = registry.identify(None, "whatever", known, "00_tasks")
    assert ex is known["00_tasks"] and "--exercise" in how
    ex, how = registry.identify(None, "alice_00_tasks (1)", known)
    assert ex is known["00_tasks"] and "file name" in how
    ex, how = registry.identify(None, "alice", known)
    assert ex is None and "--exercise" in how


def test_read_notebook():
    declared, cells = grader.read_notebook(notebook(("x = 1", "y = 2")).encode())
    assert declared == "99_add" and cells == [(2, "x = 1"), (3, "y = 2")]
    with pytest.raises(ValueError, match="not JSON"):
        grader.read_notebook(b"\xff\xfe")
    with pytest.raises(ValueError, match="no list of cells"):
        grader.read_notebook(b"[1, 2]")
    with pytest.raises(ValueError, match="format 3"):
        grader.read_notebook(json.dumps({"nbformat": 3, "cells": []}).encode())


def _frame(**frame) -> bytes:
    buffer = io.BytesIO()
    torch.save(frame, buffer)
    return struct.pack(">I", len(buffer.getvalue())) + buffer.getvalue()


def test_decode_frames_and_refuse_anything_else():
    good = _frame(kind="ready", notes=["n"]) + _frame(kind="case", value=torch.ones(2))
    frames, problem = launch.decode(good)
    assert problem is None and [f["kind"] for f in frames] == ["ready", "case"]
    frames, problem = launch.decode(good[:-3])
    assert len(frames) == 1 and "middle of a frame" in problem
    frames, problem = launch.decode(_frame(kind="ready") + struct.pack(">I", 5) + b"hello")
    assert len(frames) == 1 and "not plain data" in problem

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    buffer = io.BytesIO()
    torch.save({"kind": "case", "value": Evil()}, buffer)
    data = struct.pack(">I", len(buffer.getvalue())) + buffer.getvalue()
    frames, problem = launch.decode(data)
    assert frames == [] and "not plain data" in problem
    frames, problem = launch.decode(_frame(notes="no kind"))
    assert frames == [] and "not a frame" in problem


def test_score_question_counts_cases_and_explains_failures(tmp_path):
    q1 = registry.load_exercises(write_tests(tmp_path / "tests"))["99_add"].question("q1")
    answers = {
        0: ("ok", {"out": torch.tensor([3.0]), "changed": []}),
        1: ("ok", {"out": "a string", "changed": []}),
        2: ("error", "ValueError: no (line 2, in add)"),
    }
    score = scores.score_question(q1, answers, "the notebook stopped")
    assert (score.passed, score.total, score.score, score.max_score) == (1, 4, 0.5, 2)
    assert (score.hidden_passed, score.hidden_total) == (0, 2)
    assert score.messages == ("rows: the result: expected a tensor, got a str",)
    assert score.hidden_messages == (
        "negative (hidden check): raised ValueError: no (line 2, in add)",
        "1 check not run: the notebook stopped",
    )
    visible, hidden = score.tests()
    assert (visible["score"], visible["max_score"], visible["status"]) == (0.5, 1.0, "failed")
    assert (hidden["score"], hidden["max_score"], hidden["visibility"]) == (
        0.0,
        1.0,
        "after_due_date",
    )
    assert "negative" in hidden["output"] and "negative" not in visible["output"]
    assert score.tests("hidden")[1]["visibility"] == "hidden"
    unanswered = scores.score_question(q1, {0: ("unanswered", "hint")}, "")
    assert (unanswered.score, unanswered.messages) == (0.0, ("not answered yet (hint)",))
    late = "an earlier check of add did not finish within 2 s"
    timed = {
        0: ("timeout", "did not finish within 2 s"),
        **{i: ("skipped", late) for i in (1, 2, 3)},
    }
    slow = scores.score_question(q1, timed, "")
    assert slow.messages == ("1 + 2: did not finish within 2 s", f"1 more check not run: {late}")
    assert slow.hidden_messages == (f"2 more checks not run: {late}",)
    wrong = {i: ("ok", {"out": torch.tensor([9.0]), "changed": []}) for i in (2, 3)}
    brief = scores.score_question(q1, wrong, "stopped", hidden_details=False)
    assert brief.messages == ("2 checks not run: stopped",)
    assert brief.hidden_messages == ("2 hidden checks failed",)
    missing = scores.score_question(q1, {i: ("missing", "no add") for i in range(4)}, "")
    assert (missing.score, missing.messages) == (0.0, ("no add",))
    crashing = Question(
        "q1", "f", 1, given, check=lambda spec, got, want: 1 / 0, visible=(case("a"),)
    )
    odd = scores.score_question(crashing, {0: ("ok", {"out": 1, "changed": []})}, "")
    assert odd.messages == (
        "a: the output could not be checked (ZeroDivisionError: division by zero)",
    )
    address = scores.score_question(crashing, {0: ("error", "TypeError: <f at 0x7f3a12bc4d>")}, "")
    assert address.messages == ("a: raised TypeError: <f at 0x...>",)


def test_exposure_warns_when_the_sandbox_is_weak():
    assert grader.exposure(["private file system: read-only", "runs as unused uid 5"], None) == []
    weak_user = grader.exposure(["no private file system (unshare: EPERM)", "runs as you"], None)
    assert len(weak_user) == 1 and "can read and change your files" in weak_user[0]
    notes = ["no private file system (unshare: EPERM)", "runs as unused uid 7"]
    with tempfile.TemporaryDirectory() as folder:  # directly in /tmp: reachable by any uid
        Path(folder).chmod(0o755)
        tests_dir = write_tests(Path(folder) / "tests")
        tests_dir.chmod(0o755)
        (tests_dir / "ex99_add.py").chmod(0o644)
        assert f"chmod -R go-rwx {tests_dir}" in grader.exposure(notes, tests_dir)[0]
        (tests_dir / "ex99_add.py").chmod(0o600)
        assert grader.exposure(notes, tests_dir) == []


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout must be positive"):
        launch.Limits(timeout=0)
    with pytest.raises(ValueError, match="memory_mb must be positive"):
        launch.Limits(memory_mb=-1)


def test_check_cells_are_recognised():
    from metalib.grading.runner import is_check_cell

    assert is_check_cell('check("q1", add);')
    assert is_check_cell('# run the checks\ncheck("q1", add)\n_ = check("q2", scale)\n')
    assert not is_check_cell('check("q1", add)\ndef add(a, b):\n    return a + b')
    assert not is_check_cell("# only a comment")


# ------------------------------------------------------------------ Gradescope, real exercises


def _autograder(tmp_path: Path, notebooks: dict[str, str]) -> tuple[Path, dict]:
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    (root / "results").mkdir()
    write_tests(root / "source" / "hidden_tests")
    for name, text in notebooks.items():
        (root / "submission" / name).write_text(text)
    env = {
        **os.environ,
        "AUTOGRADER_ROOT": str(root),
        "METALIB_PYTHON": sys.executable,
        "METALIB_GRADER_ARGS": f"--timeout={TIMEOUT} --memory-mb={MEMORY_MB}",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "tools" / "gradescope" / "run_autograder")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return root, json.loads((root / "results" / "results.json").read_text())


@pytest.mark.slow
def test_run_autograder_grades_the_one_notebook(tmp_path):
    root, result = _autograder(tmp_path, {"my answers.ipynb": notebook(CORRECT)})
    assert result["score"] == 3.0 and points(result) == (2.0, 1.0)
    assert {"name", "score", "max_score", "output", "visibility"} <= set(result["tests"][0])


def test_run_autograder_wants_exactly_one_notebook(tmp_path):
    root, result = _autograder(
        tmp_path, {"a.ipynb": notebook(CORRECT), "b.ipynb": notebook(CORRECT)}
    )
    assert result["score"] == 0 and "exactly one notebook" in result["output"]
    assert "a.ipynb, b.ipynb" in result["output"]


@pytest.mark.skipif(
    not (ROOT / "hidden_tests").is_dir(), reason="a students' release has no hidden_tests/ to zip"
)
def test_build_gradescope_zip(tmp_path):
    import zipfile

    def build(target: Path, *extra: str) -> zipfile.ZipFile:
        command = [sys.executable, str(ROOT / "tools" / "gradescope" / "build.py")]
        subprocess.run([*command, "--out", str(target), *extra], check=True, capture_output=True)
        return zipfile.ZipFile(target)

    archive = build(tmp_path / "autograder.zip")
    names = set(archive.namelist())
    assert {"setup.sh", "run_autograder", "requirements.lock", "pyproject.toml"} <= names
    assert "metalib/grading/sandbox.py" in names and "metalib/__init__.py" in names
    assert any(n.startswith("hidden_tests/") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    mode = archive.getinfo("run_autograder").external_attr >> 16
    assert mode & 0o111, "run_autograder must be executable"
    again = build(tmp_path / "again.zip")
    assert (tmp_path / "again.zip").read_bytes() == (tmp_path / "autograder.zip").read_bytes()
    forced = build(tmp_path / "forced.zip", "--grader-args", "--exercise 00_tasks --timeout 300")
    text = forced.read("run_autograder").decode()
    assert "BUILT_GRADER_ARGS='--exercise 00_tasks --timeout 300'" in text
    assert again.read("run_autograder") != forced.read("run_autograder")
    tests_dir = write_tests(tmp_path / "private")
    private = build(tmp_path / "private.zip", "--tests", str(tests_dir))
    assert private.read("hidden_tests/ex99_add.py").decode() == FIXTURE
    missing = subprocess.run(
        [sys.executable, str(ROOT / "tools/gradescope/build.py"), "--tests", str(tmp_path / "no")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.skipif(not SOLUTIONS, reason="no solutions/*.ipynb yet")
def test_real_solutions_score_full_marks_and_exercises_zero(tmp_path):
    if not EXERCISES:
        pytest.skip("no exercises/*.ipynb yet (make exercises)")
    out = tmp_path / "out"
    done = grade_cli(*map(str, SOLUTIONS + EXERCISES), "--out", str(out), "--jobs=2")
    assert done.returncode == 0, done.stdout + done.stderr
    names = cli.output_names(SOLUTIONS + EXERCISES)
    for name, path in zip(names, SOLUTIONS + EXERCISES, strict=True):
        result = results(out, name)
        assert result["max_score"] > 0
        expected = result["max_score"] if path.parent.name == "solutions" else 0
        assert result["score"] == expected, (path, json.dumps(result, indent=1))


def test_course_files_under_tmp_are_kept_in_the_sandbox(tmp_path):
    """A clone or a venv under /tmp must stay importable after /tmp is covered: the outermost
    existing directories under /tmp are kept, each once; others are ignored."""
    from metalib.grading.lockdown import _under_tmp

    repo = tmp_path / "repo"
    (repo / ".venv" / "lib").mkdir(parents=True)
    (repo / "metalib").mkdir()
    paths = [str(repo / ".venv" / "lib"), str(repo), str(repo / "metalib"), "/usr", "", "/tmp"]
    if not str(tmp_path.resolve()).startswith("/tmp/"):
        pytest.skip("pytest's tmp_path is not under /tmp here")
    assert _under_tmp(paths) == [str(repo.resolve())]
    assert _under_tmp([str(repo / "missing")]) == []


def test_private_folders_are_covered_and_what_is_needed_bound_back():
    """Each folder the sandbox's Python needs is reachable by its uid, or bound back inside the
    cover of the private folder above it (with a private file system)."""
    from metalib.grading.lockdown import _within, covers, needed_paths, reachable

    needed = needed_paths()
    plan = covers(needed, launch.UNUSED_UID)
    assert "/tmp" in plan
    for path in needed:
        if reachable(path, launch.UNUSED_UID) and not _within(path, "/tmp"):
            continue
        folder = next((c for c in plan if _within(path, c)), None)
        assert folder is not None, (path, plan)
        assert any(_within(path, kept) for kept in plan[folder]), (path, plan)
    for folder in plan:
        assert folder == "/tmp" or not reachable(folder, launch.UNUSED_UID, alone=True)


def test_a_view_links_the_environment_and_nothing_else(tmp_path):
    """Hard links to the files, copies of those writable by others (without that bit), never a
    hidden folder; from a project's root, only its metalib package."""
    env = tmp_path / "env"
    (env / "pkg" / "data").mkdir(parents=True)
    (env / "pkg" / "mod.py").write_text("x = 1")
    (env / "pkg" / "data" / "theme.json").write_text("{}")
    (env / "pkg" / "loose.py").write_text("y = 2")
    (env / "pkg" / "loose.py").chmod(0o666)
    (env / "pkg" / "alias.py").symlink_to("mod.py")
    (env / "hidden_tests").mkdir()
    (env / "hidden_tests" / "ex00.py").write_text(SECRET)
    base = tmp_path / "base"
    base.mkdir()
    linked = Path(view.link_tree(str(env), str(base), [str(env / "hidden_tests")]))
    for name in ("mod.py", "data/theme.json"):
        assert (linked / "pkg" / name).stat().st_ino == (env / "pkg" / name).stat().st_ino
    loose = linked / "pkg" / "loose.py"
    assert (
        loose.read_text() == "y = 2" and loose.stat().st_ino != (env / "pkg/loose.py").stat().st_ino
    )
    assert loose.stat().st_mode & 0o777 == 0o644
    assert os.readlink(linked / "pkg" / "alias.py") == "mod.py"
    assert not (linked / "hidden_tests").exists()
    project = tmp_path / "project"
    (project / "metalib").mkdir(parents=True)
    (project / "metalib" / "__init__.py").write_text("")
    (project / "solutions").mkdir()
    other = tmp_path / "other"
    other.mkdir()
    only = Path(view.link_tree(str(project), str(other), [], only="metalib"))
    assert sorted(p.name for p in only.iterdir()) == ["metalib"]


PLANTED = {
    "right": (ADD, SCALE),
    "minus_1": ("def add(a, b):\n    return a - b", SCALE),
    "minus_2": ("def add(a, b):\n    return -b + a", SCALE),
    "minus_3": ("def add(a, b):\n    return a.sub(b)", "def scale(x, k):\n    return x + k"),
    "blank_1": ("def add(a, b):\n    raise NotImplementedError('add a and b')", SCALE),
    "blank_2": ("def add(a, b):\n    raise NotImplementedError('add a and b')", SCALE),
    "other_bug": ("def add(a, b):\n    return a * b", SCALE),
}


@pytest.mark.slow
def test_class_report_counts_planted_mistakes(tmp_path):
    """Seven planted submissions: the report counts each known mistake once per submission."""
    tests_dir = write_tests(tmp_path / "tests")
    folder = tmp_path / "planted"
    folder.mkdir()
    for name, cells in PLANTED.items():
        (folder / f"{name}.ipynb").write_text(notebook(cells))
    out = tmp_path / "out"
    done = grade_cli(str(folder), "--out", str(out), "--tests", str(tests_dir), *limits_args())
    assert done.returncode == 0, done.stdout + done.stderr
    text = (out / "report.md").read_text()
    assert "## Exercise 99_add: 7 submissions" in text, text
    assert "- q1: subtracted b instead of adding it: **3 of 7**" in text, text
    assert "- q2: added k instead of multiplying by it: **1 of 7**" in text, text
    assert "- q1: 2 of 7" in text, text  # left unanswered
    assert "| q1 (add two tensors) | 2 | 0.29 | 1 | 6 | 2 |" in text, text
    assert (out / "report_99_add.png").stat().st_size > 5000
    rows = {r["submission"]: r for r in csv.DictReader((out / "scores.csv").open())}
    assert (rows["right"]["total"], rows["minus_3"]["total"], rows["blank_1"]["q1"]) == (
        "3",
        "0",
        "0",
    )


def test_repeated_explanations_are_collapsed(tmp_path):
    q1 = registry.load_exercises(write_tests(tmp_path / "tests"))["99_add"].question("q1")
    wrong = {"out": torch.tensor([0.0]), "changed": []}
    same = {i: ("error", "ValueError: no") for i in range(4)}
    score = scores.score_question(q1, same, "")
    assert score.messages == ("raised ValueError: no (in 2 checks: 1 + 2; rows)",)
    assert score.hidden_messages == (
        "raised ValueError: no (in 2 checks: negative (hidden check); halves (hidden check))",
    )
    different = scores.score_question(q1, {0: ("ok", wrong), 1: ("error", "ValueError: no")}, "")
    assert len(different.messages) == 2


CHECK_TESTS = ROOT / "tools" / "check_tests.py"


@pytest.mark.slow
@pytest.mark.skipif(not SOLUTIONS, reason="no solutions/*.ipynb")
def test_check_tests_proves_a_private_tests_folder(tmp_path):
    """make check-tests: a copy of hidden_tests/ with one more case passes; with a case the
    solution cannot pass (a 6-way episode from 5 classes), it fails and names the notebook."""
    private = tmp_path / "private"
    shutil.copytree(ROOT / "hidden_tests", private)
    path = private / "ex00_tasks.py"
    more = '\nHIDDEN["q3"].append(case("private", sample_classes=[5, 6], episode_classes=[6, 5]))\n'
    path.write_text(path.read_text() + "from metalib.grading.question import case\n" + more)
    run = [sys.executable, str(CHECK_TESTS), "--tests", str(private), "--only", "00_tasks"]
    done = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passes: 0 notebook(s) off" in done.stdout
    bad = '\nHIDDEN["q1"].append(case("impossible", n_classes=5, n_way=6, seed=0, draws=5))\n'
    path.write_text(path.read_text() + bad)
    done = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "solutions/00_tasks.ipynb" in done.stderr and "fails: 1 notebook(s) off" in done.stdout
