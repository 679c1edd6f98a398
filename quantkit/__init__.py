"""quantkit: which quantization should we ship?

This package is imported both by the core (CLI, evaluator) and, for its `workers` and
`engines/*/worker.py` modules, by Python processes inside the engine environments. Keep this
file free of imports so that those processes only pay for what they use.
"""

__version__ = "0.1.0"
