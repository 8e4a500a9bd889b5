"""The words and places a brokerage draws from: cities, names, companies, notes, equipment.

The names are made up but read like a US freight brokerage's; some carry accents (sent in
cp1252, or in UTF-8 when cp1252 cannot hold them) and some carry the characters that a
form-urlencoded body must escape (``&``, ``=``, ``+``, ``%``, CR LF).
"""

from __future__ import annotations

import math
from typing import NamedTuple


class City(NamedTuple):
    name: str
    state: str
    zip: str
    lat: float
    lon: float


def _cities(table: str) -> tuple[City, ...]:
    rows = (line.split("|") for line in table.strip().splitlines())
    return tuple(City(n, s, z, float(la), float(lo)) for n, s, z, la, lo in rows)


CITIES = _cities("""
Chicago|IL|60607|41.88|-87.63
Atlanta|GA|30303|33.75|-84.39
Dallas|TX|75201|32.78|-96.80
Los Angeles|CA|90021|34.03|-118.24
Newark|NJ|07105|40.72|-74.17
Memphis|TN|38118|35.05|-89.93
Columbus|OH|43215|39.96|-83.00
Indianapolis|IN|46225|39.76|-86.16
Kansas City|MO|64120|39.10|-94.58
Denver|CO|80216|39.74|-104.99
Phoenix|AZ|85043|33.45|-112.07
Seattle|WA|98108|47.55|-122.32
Charlotte|NC|28206|35.23|-80.84
Jacksonville|FL|32254|30.33|-81.66
Laredo|TX|78045|27.53|-99.48
Salinas|CA|93901|36.68|-121.66
Harrisburg|PA|17111|40.27|-76.88
Nashville|TN|37210|36.16|-86.78
Louisville|KY|40213|38.25|-85.76
Minneapolis|MN|55413|44.98|-93.27
Omaha|NE|68107|41.26|-95.94
St. Louis|MO|63147|38.63|-90.20
Houston|TX|77029|29.76|-95.37
Savannah|GA|31408|32.08|-81.09
Reno|NV|89502|39.53|-119.81
Salt Lake City|UT|84104|40.76|-111.89
Fresno|CA|93706|36.74|-119.79
Allentown|PA|18109|40.60|-75.49
Buffalo|NY|14206|42.89|-78.88
Detroit|MI|48209|42.33|-83.05
Green Bay|WI|54303|44.51|-88.02
Des Moines|IA|50313|41.59|-93.62
Oklahoma City|OK|73129|35.47|-97.52
Albuquerque|NM|87105|35.08|-106.65
Portland|OR|97217|45.52|-122.68
Little Rock|AR|72206|34.75|-92.29
Birmingham|AL|35210|33.52|-86.80
Baltimore|MD|21224|39.29|-76.61
Edison|NJ|08817|40.52|-74.41
McAllen|TX|78503|26.20|-98.23
""")


def _words(text: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in text.split("|"))


FIRST_NAMES = _words(
    "Bill|Maria|James|Linda|Robert|Patricia|Michael|Jennifer|David|Susan|Kevin|Angela|Tom|"
    "Karen|Brian|Nicole|Steve|Lisa|Mark|Dana|Chris|Megan|Tony|Rachel"
)
LAST_NAMES = _words(
    "Smith|Johnson|Williams|Brown|Jones|Miller|Davis|Garcia|Wilson|Moore|Taylor|Anderson|"
    "Thomas|Jackson|White|Harris|Martin|Thompson|Lewis|Walker|Young|Allen|King|Wright"
)
ACCENTED_PEOPLE = _words("José Peña|Zoë Castañeda|René Lefèvre|Ana Núñez|Jürgen Köhler")
COMPANY_WORDS = _words(
    "Blue Ridge|Summit|Great Lakes|Prairie|Harbor|Keystone|Lone Star|Pioneer|Northern|"
    "Coastal|Red River|Iron Horse|Golden State|Evergreen|Liberty|Cedar|Granite|Sunbelt"
)
COMPANY_KINDS = _words(
    "Foods|Paper Co|Steel|Plastics|Produce|Beverage|Building Supply|Chemicals|Packaging|"
    "Furniture|Auto Parts|Distributors|Brewing|Farms"
)
ODD_COMPANIES = _words("Smith & Sons Produce|A+ Packaging Inc|100% Juice Co|R&D Plastics")
ACCENTED_CUSTOMERS = _words(
    "Café Logística|Crème Brûlée Bakery|Señor Frío Foods|Bäckerei Müller USA|Peñasco Produce"
)
CARRIER_KINDS = _words("Trucking|Transport|Logistics|Freight|Express|Carriers|Hauling")
# Łukasz is not in cp1252: a carrier the sender has to send in UTF-8 despite the accent.
ACCENTED_CARRIERS = _words("Müller Trucking|Transportes Guzmán|Górski Express|Łukasz Freight")
INSURERS = _words("Progressive|Great West Casualty|Northland|Sentry|Canal Insurance|Berkley")
FACTORS = _words("RTS Financial|Triumph Pay|OTR Capital|Apex Capital")
STREETS = _words("Industrial Pkwy|Commerce Dr|Warehouse Rd|Logistics Way|Main St|Export Blvd")
COMMODITIES = _words(
    "Dry Groceries|Frozen Foods|Produce|Paper Products|Steel Coils|Lumber|Beverages|"
    "Auto Parts|Plastic Resin|Furniture|Building Materials|General Merchandise"
)
NOTES = _words(
    "Call 1 hr ahead|Lumper = $150 & driver assist|FCFS 7:00-15:00|"
    "Check in at guard shack\r\nDock 12|No touch freight|Appt# 55102 & PO 7781|"
    "Rate = linehaul + FSC|Temp 34F +/- 2|Tarps & chains required|Deliver 100% of order"
)
# Every quirk character in one value, so each brokerage carries them at least once.
QUIRK_NOTE = "Dock 3 & 4\r\nLumper = 5% + $25"
EQUIPMENT = {"V": (50, 235), "R": (25, 285), "F": (12, 275), "FT": (3, 290), "SB": (5, 320)}
EQUIPMENT |= {"PO": (5, 190)}  # code: (weight in the mix, rate per mile in cents)
ACCESSORIALS = {"LUMPER": (15000, 40000), "DETENTION": (5000, 20000), "TARP": (7500, 15000)}
ACCESSORIALS |= {"DRIVER ASSIST": (5000, 10000), "PALLET EXCHANGE": (2500, 6000)}
OFFICES = ("NJ1", "CHI", "DAL")
EMPLOYEE_TYPES = ("dispatch", "dispatch", "accounting", "admin")
TERMS = {"NET 30": 30, "NET 15": 15, "NET 45": 45, "QUICK PAY": 2}
VENDORS = _words("Staples|Verizon Wireless|DAT Solutions|Truckstop.com|Uline|Dell|Comcast")
PURCHASES = _words("Load board subscription|Office supplies|Laptop|Phones|Pallet jack|Toner")
DEBIT_REASONS = _words("ADDITIONAL DETENTION|LUMPER REBILL|LAYOVER|REDELIVERY")
CREDIT_REASONS = _words("SHORT PAY|RATE ADJUSTMENT|DAMAGE CLAIM|DUPLICATE BILLING")
DOMAIN = "summitfreight.com"


def road_miles(a: City, b: City) -> int:
    """Road miles between two cities: great-circle distance plus a fifth for the roads."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = math.sin((lat2 - lat1) / 2) ** 2
    h += math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return max(25, round(3959 * 2 * math.asin(math.sqrt(h)) * 1.2))
