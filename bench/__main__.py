"""Run every benchmark and print its table: `make bench`."""

from __future__ import annotations

import itertools

from bench import live


def synthetic_records(fields: int, count: int) -> list[tuple[str, dict[str, str]]]:
    counter = itertools.count(1)
    table = "employees" if fields <= 40 else "loads"
    records = []
    for _ in range(count):
        n = next(counter)
        record = {"id": str(100000 + n)}
        for i in range(1, fields):
            record[f"field_{i}"] = f"value {i} of record {n}"
        records.append((table, record))
    return records


def main() -> None:
    results = live.run(synthetic_records)
    print("\n".join(live.table(results)))


if __name__ == "__main__":
    main()
