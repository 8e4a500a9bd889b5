"""The departments of a brokerage, each making and changing the records of its domain."""

from __future__ import annotations

from dataclasses import dataclass

from .accounting import Accounting
from .companies import Companies
from .loads import Loads
from .people import People
from .sales import Sales
from .world import World


@dataclass(frozen=True)
class Departments:
    """One of each department, all working on the same :class:`World`."""

    world: World
    people: People
    companies: Companies
    loads: Loads
    accounting: Accounting
    sales: Sales

    @classmethod
    def of(cls, world: World) -> Departments:
        return cls(
            world, People(world), Companies(world), Loads(world), Accounting(world), Sales(world)
        )
