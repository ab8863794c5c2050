"""What the coordinator, the sites and the CLI say to each other.

The ``.proto`` files and their generated modules (``*_pb2``, regenerated with
scripts/gen_protos.py); ``serde`` (every conversion between Python values and the protos:
scheme and state enums, scalars, metrics, JSON configs); ``wire`` (chunked payloads and
tensor payloads); ``data_schema`` (a site's data schema and its checks); ``transport``
(opening a channel, TLS by default).

It imports nothing of Cohort's (tests/test_layering.py): both sides may depend on it.
"""
