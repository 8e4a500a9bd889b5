"""A brokerage's working day, one change at a time: what Live Sync sends.

Loads move most; customers, carriers, staff, quotes and spots change now and then, and money
follows delivery. Some actions need a second change right after (an invoice after a
delivery, the invoice settled after a payment): those wait in a queue and go first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import date, datetime, timedelta
from functools import partial

from .departments import Departments
from .values import ascii_letters, cents, hm, iso, money
from .vocabulary import DOMAIN, EMPLOYEE_TYPES, NOTES, QUIRK_NOTE
from .world import CLOSED_STATUSES, LiveChange, Pool, Record, change


class LiveActivity:
    """Moves the brokerage on: :meth:`next_change` makes one change and returns it as sent."""

    def __init__(self, departments: Departments) -> None:
        self.departments = departments
        self.world = departments.world
        self._pending: deque[Callable[[], LiveChange]] = deque()
        actions = self._actions()
        self._action_fns = tuple(fn for fn, _ in actions)
        self._action_cum = tuple(sum(w for _, w in actions[: i + 1]) for i in range(len(actions)))

    def next_change(self) -> LiveChange:
        """Move the clock on 10 to 90 seconds, make one change and return it as sent."""
        w = self.world
        w.now += timedelta(seconds=w.rng.randint(10, 90))
        if self._pending:
            return self._pending.popleft()()
        for _ in range(8):
            action = w.rng.choices(self._action_fns, cum_weights=self._action_cum)[0]
            result = action()
            if result is not None:
                return result
        return self._create_load()

    def _actions(self) -> list[tuple[Callable[[], LiveChange | None], float]]:
        """What the live feed does, with how often: loads move most."""
        d = self.departments
        return [
            (self._create_load, 8),
            (self._advance_load, 40),
            (self._touch_load, 6),
            (self._bill_carrier, 6),
            (self._pay_carrier, 5),
            (self._receive_payment, 6),
            (partial(self._adjust, "debits"), 1),
            (partial(self._adjust, "credits"), 1),
            (partial(self._create, "quotes", d.sales.new_quote), 5),
            (partial(self._delete, "quotes"), 2),
            (partial(self._create, "spots", d.sales.new_spot), 4),
            (partial(self._delete, "spots"), 2),
            (self._update_spot, 1),
            (partial(self._create, "new_purchases", d.accounting.new_purchase), 2),
            (self._update_customer, 3),
            (self._create_customer, 1),
            (self._update_carrier, 3),
            (self._create_carrier, 1),
            (self._update_employee, 1),
            (self._create_employee, 0.3),
            (self._update_salesrep, 0.5),
        ]

    # -- loads ------------------------------------------------------------------------------

    def _create_load(self) -> LiveChange:
        w = self.world
        customer_id = w.pools["active_customers"].pick(w.rng) or w.customers[0]
        pickup = w.now.date() + timedelta(days=w.rng.randint(0, 3))
        load = self.departments.loads.new_load(w.now, pickup, w.data["customers"][(customer_id,)])
        w.pools["active_loads"].add(load["id"])
        return w.emit("loads", "create", load)

    def _advance_load(self) -> LiveChange | None:
        w, loads = self.world, self.departments.loads
        load_id = w.pools["active_loads"].pick(w.rng)
        if load_id is None:
            return None
        load = w.get("loads", load_id)
        if not loads.step_due(load):
            return None
        loads.advance(load, w.now)
        if load["status"] in CLOSED_STATUSES:
            w.pools["active_loads"].discard(load_id)
        if load["status"] == "DELIVERED":
            self._pending.append(partial(self._invoice, load_id))
            w.pools["unbilled_loads"].add(load_id)
        return w.emit("loads", "update", load)

    def _touch_load(self) -> LiveChange | None:
        """A load edited without a status change: an appointment, notes or the weight."""
        w, loads = self.world, self.departments.loads
        rng, load_id = w.rng, w.pools["active_loads"].pick(w.rng)
        if load_id is None:
            return None
        load, roll = w.get("loads", load_id), rng.random()
        if roll < 0.4:
            stop = rng.choice(loads.stops(load, "P") + loads.stops(load, "S"))
            day = date.fromisoformat(load[f"ps_appt_date_{stop}"])
            moved = "DROP" if rng.random() < 0.1 else hm(w.appointment(day))
            load[f"ps_appt_time_{stop}"] = moved
            if stop == 1:
                load["pickup_time"] = moved
            if stop == loads.stops(load, "S")[-1]:
                load["must_del_time"] = moved
        elif roll < 0.7:
            load["notes"] = rng.choice((*NOTES, QUIRK_NOTE))
        else:
            load["weight"] = str(rng.randint(50, 440) * 100)
        w.maybe_colon("loads", load, 0.05)
        loads.stamp(load, "w", w.now, load["dispatcher"])
        return w.emit("loads", "update", load)

    # -- money ------------------------------------------------------------------------------

    def _invoice(self, load_id: str) -> LiveChange:
        w, accounting = self.world, self.departments.accounting
        invoice = accounting.new_invoice(w.data["loads"][(load_id,)], w.now)
        accounting.add_invoice(invoice, w.now)
        return change("invoicing", "create", invoice)

    def _bill_carrier(self) -> LiveChange | None:
        w = self.world
        load_id = w.pools["unbilled_loads"].pick(w.rng)
        if load_id is None:
            return None
        w.pools["unbilled_loads"].discard(load_id)
        payable = self.departments.accounting.new_payable(w.data["loads"][(load_id,)], w.now)
        w.pools["unpaid_payables"].add(payable["id"])
        return w.emit("payable", "create", payable)

    def _pay_carrier(self) -> LiveChange | None:
        w = self.world
        payable_id = w.pools["unpaid_payables"].pick(w.rng)
        if payable_id is None:
            return None
        w.pools["unpaid_payables"].discard(payable_id)
        payable = w.get("payable", payable_id)
        self._pending.append(partial(w.emit, "payable", "update", {**payable, "status": "PAID"}))
        return w.emit("payments", "create", self.departments.accounting.new_payment(payable, w.now))

    def _receive_payment(self) -> LiveChange | None:
        w = self.world
        pro_num = w.pools["open_invoices"].pick(w.rng)
        if pro_num is None:
            return None
        receipt = self.departments.accounting.new_receipt(w.data["invoicing"][(pro_num,)], w.now)
        self._pending.append(partial(self._settle, pro_num))
        w.pools["open_invoices"].discard(pro_num)
        return w.emit("payments_received", "create", receipt)

    def _settle(self, pro_num: str) -> LiveChange:
        invoice = self.departments.accounting.settle_invoice(pro_num, self.world.now)
        return change("invoicing", "update", invoice)

    def _adjust(self, table: str) -> LiveChange | None:
        w = self.world
        if not w.invoices:
            return None
        invoice = w.data["invoicing"][(w.rng.choice(w.invoices),)]
        return w.emit(
            table, "create", self.departments.accounting.new_adjustment(table, invoice, w.now)
        )

    # -- quotes, spots, purchases -----------------------------------------------------------

    def _create(self, table: str, make: Callable[[datetime], Record]) -> LiveChange:
        w = self.world
        record = make(w.now)
        if table in w.pools:
            w.pools[table].add(w.key_of(table, record)[0])
        return w.emit(table, "create", record)

    def _delete(self, table: str) -> LiveChange | None:
        w = self.world
        key = w.pools[table].pick(w.rng)
        if key is None:
            return None
        w.pools[table].discard(key)
        return w.delete(table, (key,))

    def _update_spot(self) -> LiveChange | None:
        w = self.world
        spot_number = w.pools["spots"].pick(w.rng)
        if spot_number is None:
            return None
        spot = w.get("spots", spot_number)
        spot["status"] = w.rng.choice(("ACTIVE", "COVERED", "EXPIRED"))
        spot["rate"] = money(cents(spot["rate"]) + w.rng.randint(-10, 10) * 2500)
        return w.emit("spots", "update", spot)

    # -- customers, carriers, staff ---------------------------------------------------------

    def _update_customer(self) -> LiveChange:
        w = self.world
        rng, customer_id = w.rng, w.rng.choice(w.customers)
        customer, roll = w.get("customers", customer_id), rng.random()
        active = w.pools["active_customers"]
        if roll < 0.3:
            customer["phone1"] = w.phone()
        elif roll < 0.5:
            customer["contact2"] = w.person()
            customer["email2"] = f"{ascii_letters(customer['contact2']).lower()}@{DOMAIN}"
        elif roll < 0.7:
            customer["credit_limit"] = money(rng.randint(5, 50) * 500_000)
        elif roll < 0.85 or len(active) < 2:
            customer["total_exposure"] = money(w.exposure.get(customer_id, 0))
        else:
            _toggle_status(customer, active, "HOLD")
        return w.emit("customers", "update", customer)

    def _create_customer(self) -> LiveChange:
        w = self.world
        companies = self.departments.companies
        customer = companies.new_customer(w.now)
        companies.add_customer(customer, w.now)
        return change("customers", "create", customer)

    def _update_carrier(self) -> LiveChange:
        w = self.world
        rng, carrier_id = w.rng, w.rng.choice(w.carriers)
        carrier, roll = w.get("carriers", carrier_id), rng.random()
        active = w.pools["active_carriers"]
        if roll < 0.4:
            renewed = w.now.date() + timedelta(days=365)
            carrier["liab_ins_expires"] = carrier["cargo_ins_expires"] = iso(renewed)
            carrier["liab_ins_policy"] = f"{carrier['scac'][:2]}{rng.randint(100_000, 999_999)}"
        elif roll < 0.7:
            carrier["power_units"] = str(max(1, int(carrier["power_units"]) + rng.randint(-3, 5)))
        elif roll < 0.85 or len(active) < 2:
            carrier["phone"], carrier["contact"] = w.phone(), w.person()
        else:
            _toggle_status(carrier, active, "INACTIVE")
        return w.emit("carriers", "update", carrier)

    def _create_carrier(self) -> LiveChange:
        w = self.world
        companies = self.departments.companies
        carrier = companies.new_carrier(w.now)
        companies.add_carrier(carrier, w.now)
        return change("carriers", "create", carrier)

    def _update_employee(self) -> LiveChange:
        w = self.world
        employee = w.get("employees", w.rng.choice(w.employees))
        if w.rng.random() < 0.5:
            employee["phone"] = w.phone()
        else:
            employee["team"] = str(w.rng.randint(1, 4))
        return w.emit("employees", "update", employee)

    def _create_employee(self) -> LiveChange:
        w, people = self.world, self.departments.people
        employee = people.new_employee(w.rng.choice(EMPLOYEE_TYPES))
        people.add_employee(employee, w.now)
        return change("employees", "create", employee)

    def _update_salesrep(self) -> LiveChange:
        w = self.world
        salesrep = w.get("salesreps", w.rng.choice(w.salesreps))
        salesrep["commission_pct"] = str(w.rng.choice((15, 20, 25, 30, 35)))
        return w.emit("salesreps", "update", salesrep)


def _toggle_status(record: Record, active: Pool, inactive: str) -> None:
    """Put an ACTIVE company on ``inactive`` (out of the ``active`` pool), or back."""
    record["status"] = inactive if record["status"] == "ACTIVE" else "ACTIVE"
    (active.discard if record["status"] == inactive else active.add)(record["id"])
