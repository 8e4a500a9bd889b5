"""The brokerage's staff: employees (dispatch, accounting, admin) and the salesreps among them."""

from __future__ import annotations

from datetime import date, datetime

from .values import ascii_letters, iso
from .vocabulary import DOMAIN, OFFICES
from .world import Record, World


class People:
    """Makes employees and salesreps, and adds them to the staff the other records name."""

    def __init__(self, world: World) -> None:
        self.world = world

    def new_employee(self, kind: str) -> Record:
        w = self.world
        name = w.person()
        first, _, last = name.partition(" ")
        login = w.unique("employees", (ascii_letters(first)[:1] + ascii_letters(last)).lower())
        employee = w.new("employees", id=login, name=name, email=f"{login}@{DOMAIN}")
        employee.update(team=str(w.rng.randint(1, 4)), type=kind, phone=w.phone())
        employee.update(status="good", office=w.rng.choice(OFFICES))
        return employee

    def new_salesrep(self, employee: Record, since: date) -> Record:
        salesrep = self.world.new("salesreps", status="active", start_date=iso(since))
        for name in ("id", "name", "email", "phone", "office", "team"):
            salesrep[name] = employee[name]
        salesrep["commission_pct"] = str(self.world.rng.choice((15, 20, 25, 30)))
        return salesrep

    def add_employee(self, employee: Record, at: datetime) -> None:
        self.world.store("employees", employee, at)
        self.world.employees.append(employee["id"])

    def add_salesrep(self, salesrep: Record, at: datetime) -> None:
        self.world.store("salesreps", salesrep, at)
        self.world.salesreps.append(salesrep["id"])
