"""What a seeded search would try, without Ray running anything: the tests' view of ``make_searcher``."""
from __future__ import annotations

from typing import Any

from tune.config import TuneConfig
from tune.runner import make_searcher


def suggest_configs(config: TuneConfig, count: int) -> list[dict[str, Any]]:
    """The first ``count`` configs the seeded searcher proposes, decoded to field values."""
    space = config.search_space()
    searcher = make_searcher(config)
    searcher.set_search_properties(config.metric, config.mode, space.param_space())
    return [space.decode(searcher.suggest(f"preview_{i:05d}")) for i in range(count)]
