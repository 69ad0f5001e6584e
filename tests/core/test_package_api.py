"""`import turngym` exposes the core types eagerly and the env/tool/train API lazily, all listed in ``__all__``."""

import turngym


def test_all_lists_the_core_types_and_every_lazy_name():
    lazy = set(turngym._LAZY)
    assert lazy <= set(turngym.__all__)
    assert all(hasattr(turngym, n) for n in turngym.__all__)
    assert {"Message", "Trajectory", "Turn", "make", "train"} <= set(turngym.__all__)
