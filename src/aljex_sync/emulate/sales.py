"""Selling: quotes given to customers and spot loads posted to carriers, each on a lane."""

from __future__ import annotations

from datetime import datetime, timedelta

from .values import iso, money
from .vocabulary import CITIES, EQUIPMENT, NOTES, road_miles
from .world import Record, World


class Sales:
    """Makes quotes and spots between two of the brokerage's cities."""

    def __init__(self, world: World) -> None:
        self.world = world

    def _lane(self, record: Record, *, zips: bool) -> int:
        """Fill a record's origin and destination with two cities; return the miles."""
        origin, dest = self.world.rng.sample(CITIES, 2)
        record.update(origin_city=origin.name, origin_state=origin.state)
        record.update(dest_city=dest.name, dest_state=dest.state)
        if zips:
            record.update(origin_zip=origin.zip, dest_zip=dest.zip)
        return road_miles(origin, dest)

    def new_quote(self, at: datetime) -> Record:
        w = self.world
        rng = w.rng
        customer = w.data["customers"][(rng.choice(w.customers),)]
        quote = w.new("quotes", id=w.next_id("quotes"), customer_id=customer["id"])
        miles, equipment = self._lane(quote, zips=True), rng.choice(tuple(EQUIPMENT))
        rate, fuel = max(45_000, miles * EQUIPMENT[equipment][1]), miles * 50
        quote.update(customer_name=customer["name"], quoted_by=customer["sales_rep"])
        quote.update(equipment=equipment, weight=str(rng.randint(50, 440) * 100))
        quote.update(miles=str(miles), rate=money(rate), fuel_surcharge=money(fuel))
        quote.update(total=money(rate + fuel), created_date=iso(at.date()))
        quote.update(expires_date=iso(at.date() + timedelta(days=rng.randint(3, 14))))
        quote.update(status=rng.choice(("OPEN", "OPEN", "WON", "LOST")))
        quote.update(notes=w.sometimes(NOTES, 0.2))
        return quote

    def new_spot(self, at: datetime) -> Record:
        w = self.world
        rng = w.rng
        spot = w.new("spots", spot_number=w.next_id("spots"), status="ACTIVE")
        miles = self._lane(spot, zips=False)
        spot.update(customer_id=rng.choice(w.customers), posted_by=rng.choice(w.salesreps))
        spot.update(equipment=rng.choice(tuple(EQUIPMENT)), rate=money(max(40_000, miles * 260)))
        spot.update(weight=str(rng.randint(50, 440) * 100), created_date=iso(at.date()))
        spot.update(expires_date=iso(at.date() + timedelta(days=rng.randint(1, 5))))
        spot.update(notes=w.sometimes(NOTES, 0.2))
        return spot
