"""The pure solver core: canonical problem, reductions, backends, Pareto sweep, plan checking.

No torch and no file I/O here: everything takes and returns objects.
"""

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    """Lets ``allocator.solve(table, constraints, ...)`` call ``allocator.solve.api.solve``: the
    public function and this package share the name ``allocator.solve``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from allocator.solve.api import solve

        return solve(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
