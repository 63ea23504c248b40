"""switchyard-example: a template for third-party switchyard plugins.

Keep this file free of imports: loading the entry point ``switchyard_example.plugin`` imports
this package first, and discovery must stay cheap. The implementations live in
:mod:`switchyard_example.accelerator` and :mod:`switchyard_example.strategy`, imported only when
a user selects them.
"""
