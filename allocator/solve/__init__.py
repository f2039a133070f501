"""The pure solver core: canonical problem, reductions, backends, Pareto sweep, plan checking.

No torch and no file I/O here: everything takes and returns objects. The public function is
``allocator.solve`` (``allocator.solve.api.solve``).
"""
