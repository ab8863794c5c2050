"""SHAP audits at the sites, their federation-wide merge, and the compliance report.

Modules, in the order data flows through them:

- :mod:`explain.site_audit` runs at a site: SHAP on held-out rows -> :class:`AttributionSummary`
  (:mod:`explain.summary`), the only thing that leaves the site;
- :mod:`explain.federated` merges the summaries and compares each site with the rest;
- :mod:`explain.report` builds, validates and writes the report (HTML, PDF, JSON), drawing on
  :mod:`explain.regulations`, :mod:`explain.plots` and :mod:`explain.narrative`.

Nothing is imported here, so that ``import explain.summary`` does not pay for shap and torch.
"""
