"""The explicit API: what users of SCOOP, golemize, pypoolparty and Cluster-Workers call
instead of decorating a function (DESIGN.md section 10). Every face here runs its calls
through :mod:`pydron.explicit.dispatch`, on the same pools as ``@schedule``."""
from pydron.explicit.executor import Executor
from pydron.explicit.mapping import map, map_reduce, reduce
from pydron.explicit.mp_pool import Pool

__all__ = ["Executor", "map", "reduce", "map_reduce", "Pool"]
