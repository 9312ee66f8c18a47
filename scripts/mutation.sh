#!/usr/bin/env bash
# Mutation testing of domain/ with mutmut 3: do the unit and property tests fail when a rule
# changes? Configuration: [tool.mutmut] in pyproject.toml. Not in CI: about 40 minutes on
# two cores. Needs `pip install -e '.[mutation]'`.
#
#   scripts/mutation.sh                 a fresh run over every mutant, then the table
#   scripts/mutation.sh --resume        keep mutants/ and rerun only what is unknown or stale
#   scripts/mutation.sh --report        just print the table of the last run
#   scripts/mutation.sh NAME...         rerun these mutants (names as `mutmut results` gives)
#
# MUTATION_CHILDREN (default 2) and MUTATION_NICE (default 10) set how hard it works.
# Mutants counted as killed: "killed" and "timeout". Every other verdict ("survived",
# "no tests": never run, "suspicious", ...) counts against the score.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python -c 'import mutmut' 2>/dev/null; then
    echo "mutmut is not installed: pip install -e '.[mutation]'" >&2
    exit 2
fi

report() {
    mutmut results --all true | python -c '
import collections, re, sys

KILLED = {"killed", "timeout"}
by_module = collections.defaultdict(collections.Counter)
left = []
for line in sys.stdin:
    match = re.match(r"\s*([\w.]+)\.x\S*__mutmut_\d+: (.+)$", line.rstrip())
    if not match:
        continue
    module, status = match.groups()
    by_module[module][status in KILLED] += 1
    if status not in KILLED:
        left.append(line.strip())
print("%-32s %7s %6s %7s" % ("module", "killed", "total", "score"))
killed = total = 0
for module, counts in sorted(by_module.items()):
    k, n = counts[True], counts[True] + counts[False]
    killed, total = killed + k, total + n
    print(f"{module:<32} {k:>7} {n:>6} {100 * k / n:>6.1f}%")
if total:
    print("%-32s %7d %6d %6.1f%%" % ("all", killed, total, 100 * killed / total))
print(f"\n{len(left)} not killed:" if left else "\nEvery mutant was killed.")
print("\n".join(left))
'
}

case "${1:-}" in
--report)
    report
    exit 0
    ;;
--resume)
    shift
    ;;
"")
    rm -rf mutants # a fresh run: mutmut would otherwise reuse the last run's verdicts
    ;;
esac

started=$(date +%s)
nice -n "${MUTATION_NICE:-10}" mutmut run --max-children "${MUTATION_CHILDREN:-2}" "$@"
echo "mutmut took $(($(date +%s) - started)) s"
report
