"""Test plugins for the contracts every engine and device must fit, used by tests/test_contracts.py
and run through the conformance kit: an accelerator whose module moves create new ``Parameter``
objects, and a strategy whose engine owns precision, backward and the optimizer step."""
