"""The ``cohort`` console script: one module per command group or command.

``main`` wires them; ``admin``, ``runs``, ``audit`` and ``dashboard`` are the operators'
(over ``admin_link``, the admin stub); ``client_run``, ``site``, ``policy``, ``ledger``,
``model`` and ``serve`` a site's; ``coordinator`` serves the coordinator; ``demo``,
``simulate``, ``scenarios`` and ``workloads`` run whole federations on 127.0.0.1;
``common``, ``events`` and ``progress`` are shared.

It may import every package of Cohort's, but ``cohort admin`` and ``cohort audit`` load
neither torch, flwr nor the site agent: heavy imports stay inside the commands that need
them (tests/test_layering.py).
"""
