"""The brokerage's customers (shippers it books loads for) and carriers (trucks it hires)."""

from __future__ import annotations

from datetime import datetime, timedelta

from .values import ascii_letters, iso, money
from .vocabulary import (
    ACCENTED_CARRIERS,
    ACCENTED_CUSTOMERS,
    CARRIER_KINDS,
    CITIES,
    COMPANY_KINDS,
    COMPANY_WORDS,
    FACTORS,
    INSURERS,
    LAST_NAMES,
    NOTES,
    ODD_COMPANIES,
    STREETS,
    TERMS,
)
from .world import Record, World


class Companies:
    """Makes customers and carriers, and adds them to the pools loads are booked from."""

    def __init__(self, world: World) -> None:
        self.world = world

    def _company_name(self, *, accented: bool) -> str:
        rng = self.world.rng
        roll = rng.random()
        if accented or roll < 0.06:
            return rng.choice(ACCENTED_CUSTOMERS)
        if roll < 0.12:
            return rng.choice(ODD_COMPANIES)
        return f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_KINDS)}"

    def new_customer(self, created: datetime, *, accented: bool = False) -> Record:
        w = self.world
        rng, name = w.rng, self._company_name(accented=accented)
        code = w.unique("customers", ascii_letters(name).upper()[:5])
        city, domain = rng.choice(CITIES), ascii_letters(name).lower()[:12] + ".com"
        customer = w.new("customers", id=code, name=name, city=city.name, zip=city.zip)
        customer.update(
            state=city.state, address1=f"{rng.randint(100, 9999)} {rng.choice(STREETS)}"
        )
        customer.update(address2=rng.choice(("", "", "Suite 200", "Bldg B")), status="ACTIVE")
        customer.update(type=rng.choice(("SHIPPER", "SHIPPER", "3PL", "RETAIL")))
        customer.update(sales_rep=rng.choice(w.salesreps), terms=rng.choice(tuple(TERMS)))
        customer.update(credit_limit=money(rng.randint(5, 50) * 500_000), total_exposure="0.00")
        customer.update(created_date=iso(created.date()), notes=w.sometimes(NOTES, 0.1))
        for n in range(1, rng.randint(1, 4) + 1):
            contact = customer[f"contact{n}"] = w.person()
            customer[f"email{n}"] = f"{ascii_letters(contact).lower()}@{domain}"
            if n <= 3:
                customer[f"phone{n}"] = w.phone()
        return customer

    def new_carrier(self, created: datetime) -> Record:
        w = self.world
        rng = w.rng
        if rng.random() < 0.05:
            name = rng.choice(ACCENTED_CARRIERS)
        else:
            name = f"{rng.choice(LAST_NAMES + COMPANY_WORDS)} {rng.choice(CARRIER_KINDS)}"
        city = rng.choice(CITIES)
        scac = (ascii_letters(name).upper() + "XXX")[:3] + rng.choice("ABCXYZ")
        carrier = w.new("carriers", id=w.next_id("carriers"), name=name, scac=scac)
        carrier.update(legal_name=f"{name} {rng.choice(('LLC', 'Inc', 'Co'))}", status="ACTIVE")
        carrier.update(mc_num=str(rng.randint(100_000, 1_400_000)))
        carrier.update(dot_num=str(rng.randint(1_000_000, 3_999_999)))
        carrier.update(carrier_type=rng.choice(("TL", "TL", "LTL", "OO")))
        carrier.update(power_units=str(rng.randint(1, 250)), contact=w.person())
        carrier.update(address1=f"{rng.randint(1, 999)} {rng.choice(STREETS)}", zip=city.zip)
        carrier.update(city=city.name, state=city.state, phone=w.phone())
        carrier.update(email=f"dispatch@{ascii_letters(name).lower()[:12]}.com")
        carrier.update(created_date=iso(created.date()))
        expires = iso(w.today + timedelta(days=rng.randint(20, 400)))
        for kind, amount in (("liab", 100_000_000), ("cargo", 10_000_000)):
            carrier[f"{kind}_ins_company"] = rng.choice(INSURERS)
            carrier[f"{kind}_ins_policy"] = f"{scac[:2]}{rng.randint(100_000, 999_999)}"
            carrier[f"{kind}_ins_expires"], carrier[f"{kind}_ins_amount"] = expires, money(amount)
        if rng.random() < 0.3:  # paid through a factoring company
            pay_city = rng.choice(CITIES)
            carrier["pay_to_name"] = rng.choice(FACTORS)
            carrier["pay_to_address1"] = f"PO Box {rng.randint(100, 9999)}"
        else:
            pay_city, carrier["pay_to_name"] = city, name
            carrier["pay_to_address1"] = carrier["address1"]
        carrier["pay_to_city"], carrier["pay_to_state"] = pay_city.name, pay_city.state
        carrier["pay_to_zip"] = pay_city.zip
        return carrier

    def add_customer(self, customer: Record, at: datetime) -> None:
        self.world.store("customers", customer, at)
        self.world.customers.append(customer["id"])
        self.world.pools["active_customers"].add(customer["id"])

    def add_carrier(self, carrier: Record, at: datetime) -> None:
        self.world.store("carriers", carrier, at)
        self.world.carriers.append(carrier["id"])
        self.world.pools["active_carriers"].add(carrier["id"])
