"""Test-only plugins: a dummy engine (worker, server), a dummy builder, and the contract checks every
engine's worker must pass. Registered from the tests alone; nothing under quantkit/ names them."""
