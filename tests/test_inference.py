"""Types inferred from values (store/inference.py), and the money test they rest on.

The rule (docs/database.md): a column gets the first of date, time, int, money, bool that
every stored non-empty value fits. Inference checks a sample first and stops early; these
tests hold it to the rule where the sample and the table disagree, and on tables wider
than one query may check.
"""

from __future__ import annotations

import itertools
import json
import random
import re

from sqlalchemy import Column, MetaData, Table, Text, insert, text

from aljex_sync.store.casts import PLACEHOLDER, sql_template
from aljex_sync.store.database import open_engine
from aljex_sync.store.inference import INFER_SAMPLE, MAX_CHECKS

from .test_typed_views import Receiver, write_csv

# docs/database.md: at most 12 digits before the point, none or thousands separators, at
# most 2 after it, an optional - and $ (-$12.00, $-12.00); no leading zeros.
DOCUMENTED_MONEY = re.compile(r"(-?\$?|\$-)(0|[1-9]\d{0,11}|[1-9]\d{0,2}(,\d{3}){1,3})(\.\d{1,2})?")


def money_like_values() -> list[str]:
    """Every short string of money's characters, and longer ones near the rule's edges."""
    found = {"".join(t) for n in range(6) for t in itertools.product("01$,.-9", repeat=n)}
    dice = random.Random(7)
    for _ in range(6000):
        whole = dice.randint(0, 10 ** dice.randint(1, 14))
        digits = f"{whole:,}" if dice.random() < 0.5 else str(whole)
        sign = dice.choice(["", "-", "$", "-$", "$-", "--", "$$", "-$-"])
        found.add(sign + digits + dice.choice(["", ".5", ".55", ".555", ".", "x"]))
        found.add("".join(dice.choice("0123456789,.") for _ in range(dice.randint(1, 20))))
    return sorted(found)


def test_the_money_test_accepts_exactly_the_documented_money(database_url):
    values = money_like_values()
    engine = open_engine(database_url)
    try:
        table = Table("money_values", MetaData(), Column("v", Text))
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(insert(table), [{"v": v} for v in values])
        misfit = sql_template("misfit", "money", engine.dialect).replace(PLACEHOLDER, "v")
        with engine.connect() as conn:
            judged = dict(conn.execute(text(f"SELECT v, {misfit} FROM money_values")).all())
        wrong = [v for v in values if (judged[v] == 0) != (v == "" or bool(money(v)))]
        assert wrong == []
        assert sum(bool(money(v)) for v in values) > 3000  # both answers are well tried
    finally:
        engine.dispose()


def money(value: str) -> re.Match[str] | None:
    return DOCUMENTED_MONEY.fullmatch(value)


def inferred_types(receiver: Receiver, table: str) -> dict[str, str]:
    with receiver.engine.connect() as conn:
        encoded = conn.execute(
            text("SELECT columns FROM _aljex_views WHERE table_name = :t"), {"t": table}
        ).scalar_one()
    return {c["name"]: c["type"] for c in json.loads(encoded) if c["source"] == "inferred"}


def test_a_value_past_the_sample_that_does_not_fit_decides_the_type(database_url, tmp_path):
    rows = INFER_SAMPLE + 100
    header = ["id", "late_money", "late_text", "flags", "late_flag", "day", "gap"]
    data = [
        [f"W{n}", str(n + 1), str(n), str(n % 2), str(n % 2), "2026-09-16", ""] for n in range(rows)
    ]
    data[-1][1:5] = ["12.50", "n/a", "1", "Y"]  # the last row only: beyond the sample
    data[-1][6] = "7"
    receiver = Receiver(database_url, tmp_path)
    try:
        receiver.load(write_csv(tmp_path / "w.csv", header, data), table="widgets")
        assert inferred_types(receiver, "widgets") == {
            "id": "text",
            "late_money": "money",  # an int on the sample, but 12.50 is not
            "late_text": "text",
            "flags": "int",  # 0 and 1 are ints before they are flags
            "late_flag": "bool",  # Y is no int and no money
            "day": "date",
            "gap": "int",  # one value, past the sample
        }
    finally:
        receiver.engine.dispose()


def test_a_table_wider_than_one_query_may_check_gets_its_view(database_url, tmp_path):
    count = MAX_CHECKS + 100
    header = ["id", *(f"f{n}" for n in range(count))]
    values = ["42", "2026-09-16", "abc"]
    data = [[str(row), *(values[n % 3] for n in range(count))] for row in range(3)]
    receiver = Receiver(database_url, tmp_path)
    try:
        receiver.load(write_csv(tmp_path / "w.csv", header, data), table="widgets")
        types = inferred_types(receiver, "widgets")
        assert len(types) == count + 1
        assert [types[f"f{n}"] for n in range(6)] == ["int", "date", "text"] * 2
        assert types[f"f{count - 1}"] == ["int", "date", "text"][(count - 1) % 3]
    finally:
        receiver.engine.dispose()
