"""What each Aljex field holds, for the typed views: a date, a time, money, a count, a flag.

The synced tables keep every value as Aljex sent it, as text. The ``<table>_typed`` views
(``store/views.py``) cast them, and need a type per field. It comes, first to last, from
``[tables.X.types]`` in the configuration, from this catalog of the fields Aljex's files are
known to carry (it applies to the tables of ``catalog.py``), and else from the values
stored: a type is inferred only when every stored non-empty value fits it.

The catalog says ``text`` on purpose for numbers that are names, not quantities: ids,
reference numbers, zip codes and phone numbers keep their leading zeros and stay joinable
as text across tables.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from .catalog import BY_TABLE

FieldType = Literal["date", "time", "money", "int", "bool", "text"]
FIELD_TYPES: tuple[FieldType, ...] = get_args(FieldType)

INFERRED: tuple[FieldType, ...] = ("date", "time", "int", "money", "bool")
"""The types the rule tries, in order: the first that every non-empty value fits wins, so a
column of ``0`` and ``1`` is ``int``, and one of ``Y`` and ``N`` is ``bool``."""


def _words(kind: FieldType, text: str) -> dict[str, FieldType]:
    return dict.fromkeys(text.split(), kind)


KNOWN_FIELDS: dict[str, FieldType] = {
    **_words(
        "date",
        """
        pickup_date must_del_date delivery_date invoice_date tag_creation_date created_date
        start_date ship_date del_date inv_date due_date check_date received_date deposit_date
        purchase_date expires_date liab_ins_expires cargo_ins_expires
        """,
    ),
    **_words("time", "pickup_time must_del_time delivery_time"),
    **_words(
        "money",
        """
        line_haul fuel_surcharge invoice_total carrier_line_haul carrier_fuel
        carrier_total_rate margin total balance proj_rev act_rev credit_limit total_exposure
        amount rate liab_ins_amount cargo_ins_amount
        """,
    ),
    **_words("int", "weight pieces pallets miles temp_min temp_max equipment_length power_units"),
    **_words("bool", "hazmat osd"),
    **_words(
        "text",
        """
        id customer_id billto_id carrier_id payable_id employee_id spot_number pro_num
        ref_num invoice_num carrier_invoice_num check_num bol_num po_num pickup_num
        delivery_num customer_ref seal_num truck_num trailer_num carrier_mc mc_num dot_num
        hazmat_class gl_account zip origin_zip dest_zip billto_zip pay_to_zip phone
        carrier_phone driver_phone liab_ins_policy cargo_ins_policy
        name legal_name customer_name billto_name carrier_name vendor_name pay_to_name
        address address1 address2 origin_company origin_address dest_company dest_address
        billto_address pay_to_address1 city state origin_city origin_state dest_city
        dest_state billto_city billto_state pay_to_city pay_to_state status type office
        mode equipment commodity rate_type currency terms notes special_instructions memo
        reason description email contact carrier_contact driver_name sales_rep dispatcher
        booked_by tag_created_by created_by quoted_by posted_by approved_by pay_method scac
        carrier_type liab_ins_company cargo_ins_company tord
        """,
    ),
}

# Names that mean one thing in one file only: a load's ``team`` is a Y/N flag (two
# drivers), an employee's or salesrep's is the number of their team (``team=4``).
TABLE_FIELDS: dict[str, dict[str, FieldType]] = {"loads": {"team": "bool"}}

# Numbered families: stops, accessorials, check calls, invoice lines, audit stamps.
KNOWN_FAMILIES: tuple[tuple[re.Pattern[str], FieldType], ...] = (
    (re.compile(r"(ps_appt|ps_arrive|check_call)_date_\d+|key_[a-z]_date"), "date"),
    (re.compile(r"(ps_appt|ps_arrive|check_call)_time_\d+|key_[a-z]_time"), "time"),
    (re.compile(r"(carrier_)?accessorial\d+|amount\d+"), "money"),
    (
        re.compile(
            r"ps\d+|ps_(company|address|city|state|ref|zip)_\d+|extra_ref_\d+|phone\d+"
            r"|email\d+|contact\d+|(carrier_)?accessorial_desc\d+|description\d+"
            r"|check_call_(city|state|status|note)_\d+|key_[a-z]_user"
        ),
        "text",
    ),
)


def known_type(table: str, field: str) -> FieldType | None:
    """The catalog's type of a field of one of Aljex's files, or None when it has none.

    Field names are case-insensitive, as everywhere in aljex-sync (``Osd`` is ``osd``), and
    a report's spelling is the API's: ``Pickup Date`` is ``pickup_date``.
    """
    if table not in BY_TABLE:
        return None
    name = re.sub(r"[^a-z0-9]+", "_", field.lower()).strip("_")
    found = TABLE_FIELDS.get(table, {}).get(name) or KNOWN_FIELDS.get(name)
    if found is not None:
        return found
    return next((kind for pattern, kind in KNOWN_FAMILIES if pattern.fullmatch(name)), None)
