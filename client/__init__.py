"""Cohort's site side: the agent a hospital or bank runs, and everything it decides alone.

One module per job:

- agent.py: the loop (join, long polls, heartbeats, refusals, stop); site.py: its
  configuration and the :class:`client.site.Site` protocol the other modules read;
- link.py: every call to the coordinator (node token, deadlines, the signed update
  header and chunk stream), also what bench/load_sites.py and the tests' fake sites use;
- tasks.py: the INIT, TRAIN and AUDIT handlers and final models; run_keys.py: KEYGEN and
  opening a run's sealed key; keys.py: whom a custodian seals to and which dealings a
  site accepts; threshold.py, threshold_partials.py: t-of-n shares and partials;
- schemes/: each update scheme's site faces (encode, decode): plain.py (float32,
  8-bit), paillier.py (single-key and threshold; its docstring walks through a secure
  round), paillier_model.py (server optimiser, model state, obfuscator pools);
- the site's sovereignty: custody.py (its identity), peers.py, pins.py, policy.py,
  sovereign.py (the gate every task passes), verify.py (aggregate checks), receipts.py;
- privacy: dp.py, dp_norm.py, dp_site_scheme.py (site-level DP updates), dp_audit.py
  (noised SHAP summaries), dp_site.py (budget gate, record-level rounds),
  dp_site_rounds.py (site-level rounds), dp_audit_gate.py (the summary's charge),
  dp_charge.py (what every charge shares), ledger.py;
- training: trainer.py, model_trainer.py (its SHAP audit: model_audit.py; its rows
  on disk: site_dataset.py; the lock over the global generators both trainers take:
  rng.py), data.py, data_schema.py, apps.py (ClientApp loader), audit.py (SHAP
  summaries), prewarm.py, simulation.py (virtual sites).

It may import crypto, models, explain and protos, never coordinator or cli
(tests/test_layering.py): the site and the coordinator speak only through protos.
"""
