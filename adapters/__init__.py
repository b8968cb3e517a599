"""Framework adapters: one module per framework, named as in the registry.

An adapter runs a Case through its framework's own optimizer and returns the
parameter trajectory and the state slots it can read. It knows its framework
and nothing about rules: how canonical hyperparameters map onto the native
constructor lives in the spec. This folder is installed as
`conformance.adapters` (never as a top-level `adapters`, a name an unrelated
PyPI project owns); `conformance.registry` maps framework names to modules.
"""
