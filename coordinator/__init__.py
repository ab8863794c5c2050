"""The coordinator: schedules runs, hands out tasks, takes updates, keeps the audit log.

It never reads a secure run's updates: it checks their form, multiplies ciphertexts and
relays keys and statements. One module per job:

- serving: ``server`` (build and run), ``services`` (one line per RPC), ``interceptors``,
  ``access`` and ``call_limits`` (who may call, how often), ``errors`` (the one gRPC map);
- sites' calls: ``federation`` (update intake, with ``intake``), ``sites`` (identity),
  ``handout`` (tasks and models), ``keys`` and ``threshold`` (run keys), ``statements``
  (refusals, audits, ledger entries), ``manifests`` and ``identity`` (what sites check);
- operators' calls: ``admin``, ``run_creation``, ``run_views``, ``exports``, ``report``;
- a run's life: ``runs`` (RunSpec and the typed RunConfig), ``scheduler`` (the state
  machine), ``selection`` (who gets which task), ``schemes`` (each update scheme's
  validation and aggregate; ``aggregation`` for plaintext strategies), ``audit_phase``,
  ``provenance``, ``privacy``, ``refusals``, ``waiting``;
- storage: ``schema``, ``db`` and ``migrations``, ``blobs``, ``auditlog``, ``anchoring``,
  ``queries`` (shared reads), ``hub`` (what every part shares), ``metrics``, ``pki``.

It may import ``crypto``, ``protos``, ``explain`` and ``models`` (today it imports no
``models``: ``model_names`` knows the names without torch), never ``client`` or ``cli``:
it speaks to sites only through ``protos`` (tests/test_layering.py).
"""
