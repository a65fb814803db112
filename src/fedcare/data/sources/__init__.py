"""Where a study's data comes from (``[data] source = ...``): one module per source.

Each module declares its source once (:func:`~fedcare.data.sources.registry.register_source`):
its options (the study's ``[data]`` section for that source: validation, error messages, the
config reference and ``--help``), its :class:`~fedcare.data.sources.base.DataCapabilities`
(which the compatibility rules read, never its name) and how it builds the sites' data in a
simulation. Adding a source is one new file here and its tests (``tests/contracts``).
"""
