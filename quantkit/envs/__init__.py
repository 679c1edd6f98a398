"""One Python environment per engine, created from pinned requirement files kept in this package."""

from quantkit.envs.manager import EnvStatus, create, python_for, runtime_env, status
from quantkit.envs.specs import EnvSpec, spec, specs

__all__ = ["EnvSpec", "EnvStatus", "create", "python_for", "runtime_env", "spec", "specs", "status"]
