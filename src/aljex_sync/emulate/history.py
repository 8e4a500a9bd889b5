"""What happened before the brokerage's clock starts: staff, customers and carriers hired
over the years, loads over ``history_days`` with their invoices, bills and payments, and
the quotes, spots and purchases of the last weeks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta

from .departments import Departments
from .fields import ACCESSORIAL_COUNT
from .values import money
from .vocabulary import EMPLOYEE_TYPES, QUIRK_NOTE
from .world import CLOSED_STATUSES, Record


class History:
    """Lays down a brokerage's past on its world, up to the clock's first tick."""

    def __init__(self, departments: Departments) -> None:
        self.departments = departments
        self.world = departments.world

    def lay_down(self) -> None:
        """Generate the whole history, in the one order a seed reproduces."""
        w, d = self.world, self.departments
        scale, now = w.scale, w.now
        for n in range(scale.employees):
            since = now - timedelta(days=w.rng.randint(200, 2000))
            kind = "sales" if n < scale.salesreps else w.rng.choice(EMPLOYEE_TYPES)
            employee = d.people.new_employee(kind)
            d.people.add_employee(employee, since)
            if n < scale.salesreps:
                d.people.add_salesrep(d.people.new_salesrep(employee, since.date()), since)
        forced = w.rng.randrange(scale.customers)
        for n in range(scale.customers):
            when = now - timedelta(days=w.rng.randint(60, 1500))
            d.companies.add_customer(d.companies.new_customer(when, accented=n == forced), when)
        for _ in range(scale.carriers):
            when = now - timedelta(days=w.rng.randint(30, 1500))
            d.companies.add_carrier(d.companies.new_carrier(when), when)
        self._loads()
        self._extras()
        self._place_quirks()
        for customer_id in w.customers:
            customer = w.get("customers", customer_id)
            customer["total_exposure"] = money(w.exposure.get(customer_id, 0))
            w.data["customers"][(customer_id,)] = customer

    def _loads(self) -> None:
        w = self.world
        rng, now = w.rng, w.now
        plans = []
        for _ in range(w.scale.loads):
            pickup = w.today + timedelta(days=rng.randint(-w.scale.history_days, 6))
            created = w.office_hours(pickup - timedelta(days=rng.randint(1, 7)))
            if created >= now:
                created = now - timedelta(minutes=rng.randint(30, 900))
            plans.append((created, pickup, rng.choice(w.customers)))
        for created, pickup, customer_id in sorted(plans):
            load = self.departments.loads.new_load(
                created, pickup, w.data["customers"][(customer_id,)]
            )
            updated = self._progress(load, created, pickup)
            w.store("loads", load, created)
            w.meta["loads"][(load["id"],)].updated = updated
            if load["status"] not in CLOSED_STATUSES:
                w.pools["active_loads"].add(load["id"])
            elif load["status"] == "DELIVERED":
                self._money(load, updated)

    def _target(self, load: Record, pickup: date) -> str:
        """The status a history load has reached by now, from its dates."""
        w = self.world
        due = date.fromisoformat(load["must_del_date"])
        rng = w.rng
        if due < w.today:
            return "VOID" if rng.random() < 0.03 else "DELIVERED"
        if pickup < w.today:
            return "LOADED"
        if pickup == w.today:
            return rng.choice(("COVERED", "DISPATCHED", "DISPATCHED"))
        return rng.choices(("OPEN", "ASSIGNED", "COVERED", "DISPATCHED"), (45, 5, 35, 15))[0]

    def _progress(self, load: Record, created: datetime, pickup: date) -> datetime:
        """Move a history load to the status its dates call for; return its last update."""
        w, loads = self.world, self.departments.loads
        target, now = self._target(load, pickup), w.now
        at = created
        if target == "VOID":
            at = w.between(created, min(created + timedelta(hours=20), now))
            loads.void(load, at)
            return at
        if target == "OPEN":
            return at
        pickup_at = w.appointment(pickup)
        at = w.between(at, min(pickup_at - timedelta(hours=2), now))
        loads.assign(load, at, confirm=target != "ASSIGNED")
        if target in ("ASSIGNED", "COVERED"):
            return at
        at = w.between(at, min(pickup_at - timedelta(minutes=30), now))
        loads.dispatch(load, at)
        if target == "DISPATCHED":
            return at
        at = max(at, pickup_at) + timedelta(minutes=w.rng.randint(0, 180))
        loads.pick_up(load, at)
        if target == "LOADED":
            return at
        due_at = w.appointment(date.fromisoformat(load["must_del_date"]))
        at = min(max(at + timedelta(hours=2), due_at), now - timedelta(minutes=5))
        loads.deliver(load, at)
        if w.rng.random() < 0.08:  # touched again later, e.g. paperwork
            at = w.between(at, now)
            loads.stamp(load, "w", at, load["dispatcher"])
        return at

    def _money(self, load: Record, delivered: datetime) -> None:
        """Invoice a delivered history load; bill, pay and collect on it when time allows."""
        w, accounting = self.world, self.departments.accounting
        rng, now = w.rng, w.now
        at = w.between(delivered + timedelta(hours=1), min(delivered + timedelta(hours=30), now))
        invoice = accounting.new_invoice(load, at)
        accounting.add_invoice(invoice, at)
        if at + timedelta(days=12) < now and rng.random() < 0.7:
            paid = w.between(at + timedelta(days=10), min(at + timedelta(days=40), now))
            w.store("payments_received", accounting.new_receipt(invoice, paid), paid)
            accounting.settle_invoice(invoice["pro_num"], paid)
        if delivered + timedelta(days=1) < now and rng.random() < 0.85:
            billed = w.between(
                delivered + timedelta(hours=4), min(delivered + timedelta(days=5), now)
            )
            payable = accounting.new_payable(load, billed)
            w.store("payable", payable, billed)
            if billed + timedelta(days=7) < now and rng.random() < 0.75:
                paid = w.between(billed + timedelta(days=5), min(billed + timedelta(days=25), now))
                w.store("payments", accounting.new_payment(payable, paid), paid)
                w.store("payable", {**payable, "status": "PAID"}, paid)
            else:
                w.pools["unpaid_payables"].add(payable["id"])
        else:
            w.pools["unbilled_loads"].add(load["id"])

    def _extras(self) -> None:
        """Debits and credits on past invoices; the quotes, spots and purchases of late."""
        w, d = self.world, self.departments
        rng, now, scale = w.rng, w.now, w.scale
        for table, count in (("debits", scale.debits), ("credits", scale.credits)):
            for _ in range(count if w.invoices else 0):
                invoice = w.data["invoicing"][(rng.choice(w.invoices),)]
                at = w.between(w.meta["invoicing"][(invoice["pro_num"],)].created, now)
                w.store(table, d.accounting.new_adjustment(table, invoice, at), at)
        makers: list[tuple[str, int, int, Callable[[datetime], Record]]] = [
            ("quotes", scale.quotes, 20, d.sales.new_quote),
            ("spots", scale.spots, 3, d.sales.new_spot),
            ("new_purchases", scale.new_purchases, 25, d.accounting.new_purchase),
        ]
        for table, count, days, make in makers:
            for at in sorted(w.between(now - timedelta(days=days), now) for _ in range(count)):
                key = w.store(table, make(at), at)
                if table in w.pools:
                    w.pools[table].add(key[0])

    def _place_quirks(self) -> None:
        """Make sure every brokerage shows each feed quirk at least once in its loads."""
        w = self.world
        rng, loads = w.rng, w.data["loads"]
        if not loads:
            return
        keys = list(loads)
        colon = dict(loads[rng.choice(keys)])
        slots = [f"accessorial{n}" for n in range(1, ACCESSORIAL_COUNT + 1)]
        colon[next(s for s in reversed(slots) if colon[s] == "")] = ":"
        loads[(colon["id"],)] = colon
        drop = dict(loads[rng.choice(keys)])
        drop[f"ps_appt_time_{rng.choice(self.departments.loads.stops(drop, 'S'))}"] = "DROP"
        loads[(drop["id"],)] = drop
        noted = dict(loads[rng.choice(keys)])
        noted["notes"] = QUIRK_NOTE
        loads[(noted["id"],)] = noted
