"""The lock over torch's and numpy's process-wide random generators, shared by the trainers.

torch's and numpy's global generators are process-wide. Sites sharing a process (the
demo, tests, simulations) take turns while they seed or draw from them (training,
evaluation: every DataLoader draws a seed; audits); otherwise one site's draw lands in
the middle of another's initialisation and the "identical" frozen bases differ. A
process holding one site never waits on this lock. It lives here, apart from its users
(client/trainer.py, client/model_trainer.py, client/model_audit.py), so that none of
them imports another for it.
"""

from __future__ import annotations

import threading

GLOBAL_RNG_LOCK = threading.RLock()
