"""Compact table of an Nsight Compute CSV (``ncu --csv --metrics ...``): one JSON line per profiled
launch with its kernel name (first 40 characters) and each metric's value."""
import csv, json, sys

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
head = next((r for r in rows if "Metric Name" in r), None)
if head is None:
    print(open(sys.argv[1]).read()[-2000:])
    sys.exit(1)
ki, ni, vi, ii = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value"), head.index("ID")
out = {}
for r in rows:
    if r is head or r[ni] == "Metric Name":
        continue
    d = out.setdefault(r[ii], {"kernel": r[ki][:40]})
    name = r[ni].replace("smsp__warp_issue_stalled_", "stall_").replace("_per_warp_active.pct", "")
    d[name] = r[vi]
for d in out.values():
    print(json.dumps(d))
