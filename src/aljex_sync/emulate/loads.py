"""A load's life: booked OPEN with its stops and price, then assigned to a carrier, covered,
dispatched, picked up and delivered (or voided), each step stamped as Aljex audits it."""

from __future__ import annotations

import itertools
import math
from datetime import date, datetime, timedelta

from .fields import ACCESSORIAL_COUNT, CHECK_CALL_COUNT, STOP_COUNT
from .values import cents, hm, iso, money
from .vocabulary import (
    ACCESSORIALS,
    CITIES,
    COMMODITIES,
    COMPANY_WORDS,
    EQUIPMENT,
    NOTES,
    OFFICES,
    STREETS,
    road_miles,
)
from .world import Record, World


class Loads:
    """Books loads and moves them along OPEN -> (ASSIGNED) -> COVERED -> DISPATCHED ->
    LOADED -> DELIVERED, changing the record in place (callers store it)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def new_load(self, created: datetime, pickup: date, customer: Record) -> Record:
        """An OPEN load booked at ``created`` for ``customer``, picking up on ``pickup``."""
        w = self.world
        rng, rep = w.rng, customer["sales_rep"]
        equipment = rng.choices(tuple(EQUIPMENT), [weight for weight, _ in EQUIPMENT.values()])[0]
        load = w.new("loads", id=w.next_id("loads"), status="OPEN", mode="TL")
        load.update(office=rng.choice(OFFICES), dispatcher=rng.choice(w.employees))
        load.update(customer_id=customer["id"], customer_name=customer["name"])
        load.update(billto_id=customer["id"], billto_name=customer["name"])
        load.update(sales_rep=rep, booked_by=rep, tag_created_by=rep)
        load.update(tag_creation_date=iso(created.date()), terms=customer["terms"])
        load.update(equipment=equipment, commodity=rng.choice(COMMODITIES))
        load.update(equipment_length="48" if equipment in ("F", "SB") else "53")
        load.update(weight=str(rng.randint(50, 440) * 100), pieces=str(rng.randint(1, 1200)))
        load.update(pallets=str(rng.randint(1, 26)), hazmat="N", Osd="N")
        load.update(team="Y" if rng.random() < 0.05 else "N", rate_type="F", currency="USD")
        load.update(bol_num=w.digits(7), po_num=f"PO{w.digits(6)}")
        load.update(pickup_num=w.digits(5), delivery_num=w.digits(5))
        load.update(customer_ref=f"{customer['id']}-{w.digits(4)}")
        load.update(Tord=f"T{w.digits(6)}" if rng.random() < 0.3 else "")
        load.update(notes=w.sometimes(NOTES, 0.25))
        load.update(special_instructions=w.sometimes(NOTES, 0.1))
        if equipment == "R":
            low = rng.randint(28, 36)
            load["temp_min"], load["temp_max"] = str(low), str(low + 4)
        for n in range(1, rng.randint(1, 3)):
            load[f"extra_ref_{n}"] = w.digits(6)
        stops = self._add_stops(load, pickup, customer)
        self._price(load, equipment, stops)
        self.stamp(load, "c", created, rep)
        self.stamp(load, "w", created, rep)
        w.maybe_colon("loads", load, 0.015)
        return load

    def _add_stops(self, load: Record, pickup: date, customer: Record) -> int:
        """Fill the ``ps`` stop fields, origin, destination and dates; return the stop count."""
        rng = self.world.rng
        pickups, drops = rng.choices((1, 2), (85, 15))[0], rng.choices((1, 2, 3), (75, 20, 5))[0]
        cities = rng.sample(CITIES, pickups + drops)
        miles = sum(road_miles(a, b) for a, b in itertools.pairwise(cities))
        transit = max(1, math.ceil(miles / 550))
        for n, city in enumerate(cities, 1):
            is_pickup = n <= pickups
            day = (
                pickup
                if is_pickup
                else pickup + timedelta(days=max(1, transit * (n - pickups) // drops))
            )
            company = (
                customer["name"]
                if is_pickup
                else f"{rng.choice(COMPANY_WORDS)} DC {rng.randint(1, 99)}"
            )
            load[f"ps{n}"] = "P" if is_pickup else "S"
            load[f"ps_company_{n}"], load[f"ps_city_{n}"] = company, city.name
            load[f"ps_address_{n}"] = f"{rng.randint(100, 9999)} {rng.choice(STREETS)}"
            load[f"ps_state_{n}"], load[f"ps_zip_{n}"] = city.state, city.zip
            load[f"ps_ref_{n}"] = f"{'PU' if is_pickup else 'DEL'}#{rng.randint(10**4, 10**5)}"
            load[f"ps_appt_date_{n}"] = iso(day)
            load[f"ps_appt_time_{n}"] = (
                "DROP" if rng.random() < 0.03 else hm(self.world.appointment(day))
            )
        last = pickups + drops
        for end, n in (("origin", 1), ("dest", last)):
            load[f"{end}_company"], load[f"{end}_address"] = (
                load[f"ps_company_{n}"],
                load[f"ps_address_{n}"],
            )
            load[f"{end}_city"], load[f"{end}_state"] = load[f"ps_city_{n}"], load[f"ps_state_{n}"]
            load[f"{end}_zip"] = load[f"ps_zip_{n}"]
        load["pickup_date"], load["pickup_time"] = load["ps_appt_date_1"], load["ps_appt_time_1"]
        load["must_del_date"] = load[f"ps_appt_date_{last}"]
        load["must_del_time"] = load[f"ps_appt_time_{last}"]
        load["miles"] = str(miles)
        return last

    def _price(self, load: Record, equipment: str, stops: int) -> None:
        """The customer's side of the rate: line haul, fuel, accessorials, total."""
        rng, miles = self.world.rng, int(load["miles"])
        line_haul = max(45_000, miles * EQUIPMENT[equipment][1] * rng.randint(85, 115) // 100)
        line_haul = line_haul // 2500 * 2500
        fuel = miles * rng.randint(40, 60)
        charges = [("STOP OFF", 7500)] * (stops - 2)
        if rng.random() < 0.25:
            code = rng.choice(tuple(ACCESSORIALS))
            charges.append((code, rng.randint(*ACCESSORIALS[code]) // 100 * 100))
        for n, (code, amount) in enumerate(charges[:ACCESSORIAL_COUNT], 1):
            load[f"accessorial_desc{n}"], load[f"accessorial{n}"] = code, money(amount)
        total = line_haul + fuel + sum(amount for _, amount in charges[:ACCESSORIAL_COUNT])
        load["line_haul"], load["fuel_surcharge"] = money(line_haul), money(fuel)
        load["invoice_total"] = money(total)

    def stamp(self, load: Record, letter: str, at: datetime, user: str) -> None:
        """Aljex's audit stamp ``key_<letter>_date/_time/_user`` (letters in fields.py)."""
        load[f"key_{letter}_date"], load[f"key_{letter}_time"] = iso(at.date()), hm(at)
        load[f"key_{letter}_user"] = user

    def stops(self, load: Record, kind: str) -> list[int]:
        """The numbers of the load's pickup (``P``) or drop (``S``) stops."""
        return [n for n in range(1, STOP_COUNT + 1) if load[f"ps{n}"] == kind]

    def step_due(self, load: Record) -> bool:
        """Trucks wait for the calendar: loaded on the pickup day, delivered on the due day."""
        waits_for = {"DISPATCHED": "pickup_date", "LOADED": "must_del_date"}.get(load["status"])
        return waits_for is None or load[waits_for] <= iso(self.world.now.date())

    def advance(self, load: Record, at: datetime) -> None:
        """One step along OPEN -> (ASSIGNED) -> COVERED -> DISPATCHED -> LOADED -> DELIVERED."""
        status, roll = load["status"], self.world.rng.random()
        if status == "OPEN" and roll < 0.04:
            self.void(load, at)
        elif status == "OPEN":
            self.assign(load, at, confirm=roll >= 0.14)
        elif status == "ASSIGNED":
            self._confirm(load, at)
        elif status == "COVERED":
            self.dispatch(load, at)
        elif status == "DISPATCHED":
            self.pick_up(load, at)
        elif status == "LOADED":
            self.deliver(load, at)

    def assign(self, load: Record, at: datetime, *, confirm: bool) -> None:
        """OPEN -> ASSIGNED (a carrier named) or COVERED (and its rate confirmation sent)."""
        w = self.world
        rng = w.rng
        carrier_id = w.pools["active_carriers"].pick(rng) or rng.choice(w.carriers)
        carrier = w.data["carriers"][(carrier_id,)]
        load["carrier_id"], load["carrier_name"] = carrier_id, carrier["name"]
        load["carrier_mc"], load["carrier_phone"] = carrier["mc_num"], carrier["phone"]
        load["carrier_contact"] = carrier["contact"]
        revenue = cents(load["line_haul"]) + cents(load["fuel_surcharge"])
        line_haul = revenue * rng.randint(78, 90) // 100 // 2500 * 2500
        extras = 0
        for n in range(1, ACCESSORIAL_COUNT + 1):
            if load[f"accessorial_desc{n}"] in ("STOP OFF", "LUMPER", "TARP"):
                amount = cents(load[f"accessorial{n}"]) * rng.randint(80, 100) // 100
                load[f"carrier_accessorial_desc{n}"] = load[f"accessorial_desc{n}"]
                load[f"carrier_accessorial{n}"], extras = money(amount), extras + amount
        cost, total = line_haul + extras, cents(load["invoice_total"])
        load["carrier_line_haul"], load["carrier_fuel"] = money(line_haul), "0.00"
        load["carrier_total_rate"], load["margin"] = money(cost), money(total - cost)
        load["margin_pct"] = f"{100 * (total - cost) / total:.1f}" if total else "0.0"
        load["status"] = "COVERED" if confirm else "ASSIGNED"
        self.stamp(load, "h", at, load["dispatcher"])
        self.stamp(load, "w", at, load["dispatcher"])
        if confirm:
            self._confirm(load, at)

    def _confirm(self, load: Record, at: datetime) -> None:
        load["status"] = "COVERED"
        self.stamp(load, "r", at, load["dispatcher"])
        self.stamp(load, "w", at, load["dispatcher"])

    def dispatch(self, load: Record, at: datetime) -> None:
        w = self.world
        load["status"], load["driver_name"] = "DISPATCHED", w.person()
        load["driver_phone"], load["truck_num"] = w.phone(), str(w.rng.randint(100, 9999))
        load["trailer_num"] = f"{w.rng.choice('ABCHJKLMRTUW')}{w.rng.randint(1000, 99999)}"
        self.stamp(load, "d", at, load["dispatcher"])
        self.stamp(load, "w", at, load["dispatcher"])

    def _check_call(self, load: Record, at: datetime, stop: int, status: str) -> None:
        for n in range(1, CHECK_CALL_COUNT + 1):
            if load[f"check_call_date_{n}"] == "":
                load[f"check_call_date_{n}"], load[f"check_call_time_{n}"] = (
                    iso(at.date()),
                    hm(at),
                )
                load[f"check_call_city_{n}"] = load[f"ps_city_{stop}"]
                load[f"check_call_state_{n}"] = load[f"ps_state_{stop}"]
                load[f"check_call_status_{n}"] = status
                return

    def pick_up(self, load: Record, at: datetime) -> None:
        load["status"], load["seal_num"] = "LOADED", str(self.world.rng.randint(10**5, 10**6))
        for n in self.stops(load, "P"):
            load[f"ps_arrive_date_{n}"], load[f"ps_arrive_time_{n}"] = iso(at.date()), hm(at)
        self._check_call(load, at, 1, "LOADED")
        self.stamp(load, "l", at, load["dispatcher"])
        self.stamp(load, "w", at, load["dispatcher"])

    def deliver(self, load: Record, at: datetime) -> None:
        drops = self.stops(load, "S")
        for n in drops:
            arrived = at - timedelta(hours=3 * (drops[-1] - n))
            load[f"ps_arrive_date_{n}"], load[f"ps_arrive_time_{n}"] = (
                iso(arrived.date()),
                hm(arrived),
            )
        load["status"], load["delivery_date"], load["delivery_time"] = (
            "DELIVERED",
            iso(at.date()),
            hm(at),
        )
        load["Osd"] = "Y" if self.world.rng.random() < 0.03 else "N"
        self._check_call(load, at, drops[-1], "DELIVERED")
        self.stamp(load, "p", at, load["dispatcher"])
        self.stamp(load, "w", at, load["dispatcher"])

    def void(self, load: Record, at: datetime) -> None:
        load["status"] = "VOID"
        self.stamp(load, "w", at, load["dispatcher"])
