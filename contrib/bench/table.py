"""Table cells shared by the side-by-side benchmarks (peer-bench.sh,
boot-room.sh): medians, a value with how many of the rounds it is the
median of, and a ratio to the best of some servers."""
import statistics


def median(values):
    return statistics.median(values) if values else None


def cell(value, digits, done, rounds):
    """value to digits places, or why there is none: "fail" when no round
    finished, "n/a" when the value cannot be measured."""
    if value is None:
        return "fail" if done == 0 else "n/a"
    return f"{value:.{digits}f}" + ("" if done == rounds else f" ({done}/{rounds} ok)")


def ratio(mine, theirs, best):
    """mine over the best (min or max) of theirs, a dict by server name."""
    known = {name: v for name, v in theirs.items() if v is not None}
    if mine is None or not known:
        return "-"
    name = best(known, key=known.get)
    return f"{mine / known[name]:.2f}x ({name})"
