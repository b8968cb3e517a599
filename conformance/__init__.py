"""optimizer-conformance: differential conformance tests of optimizer update rules.

Specs (YAML, one per rule) state the canonical math and how each framework
maps onto it; a float64 reference kernel evaluates them; adapters run the
frameworks' own optimizers on the same inputs; the comparison names which
documented variant, if any, a framework implements.
"""

__version__ = "0.1.0"
