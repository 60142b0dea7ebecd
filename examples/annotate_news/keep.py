"""Keep the scored rows whose top label has at least the given probability."""
import json
import sys

src, dst, cut = sys.argv[1], sys.argv[2], float(sys.argv[3])
kept = total = 0
with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
    for line in f:
        row = json.loads(line)
        total += 1
        if row.get("confidence", 0.0) >= cut:
            out.write(line)
            kept += 1
print(f"kept {kept} of {total} rows with confidence >= {cut} → {dst}")
