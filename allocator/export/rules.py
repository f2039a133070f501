"""Target rules moved to ``allocator.schema.targets`` (below both solve and export); this alias
keeps old imports working."""

from allocator.schema.targets import (  # noqa: F401
    ALIASES,
    ANY_GROUP,
    TARGETS,
    TargetRules,
    check_plan,
    constraints_for_target,
    enforce,
    get_rules,
    group_problem,
    kind_of,
    option_fits,
    sparsity_kind,
    unit_names,
)
