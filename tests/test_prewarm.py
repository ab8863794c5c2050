"""One-time start-up costs: paid while a site waits, never inside a round, and only once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout.strip()


def test_a_plain_model_is_exchanged_without_importing_peft() -> None:
    out = _run(
        "import sys, models\n"
        "m = models.build_model('tabular_mlp', in_features=4, num_classes=2)\n"
        "w = models.get_weights(m); models.set_weights(m, w)\n"
        "print(len(w), 'peft' in sys.modules, 'transformers' in sys.modules)"
    )
    count, peft, transformers = out.split()
    assert int(count) > 0 and peft == "False" and transformers == "False"


def test_training_imports_load_what_the_first_optimiser_step_needs() -> None:
    out = _run(
        "import sys\n"
        "from client import prewarm\n"
        "before = 'torch._dynamo' in sys.modules\n"
        "prewarm.training_imports()\n"
        "print(before, 'torch._dynamo' in sys.modules)"
    )
    assert out == "False True"


def test_each_warm_up_runs_once_per_process() -> None:
    out = _run(
        "import threading\n"
        "from client import prewarm\n"
        "calls = []\n"
        "for _ in range(3):\n"
        "    prewarm._once('x', lambda: calls.append(1))\n"
        "for t in threading.enumerate():\n"
        "    if t.name.startswith('prewarm-'): t.join()\n"
        "print(len(calls))"
    )
    assert out == "1"
