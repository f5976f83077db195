"""Commands that compress: compress, sweep, runs, pareto, bench (registered on the main parser)."""


def register(sub, common) -> dict:
    return {}
