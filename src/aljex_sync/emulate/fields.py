"""The field names of every record the seeded brokerage (``brokerage.py``) produces.

The names are those real Aljex feeds carry; where the feeds only hint at a family (stops,
accessorials, check calls) the family is spelled out here so that every record of a table
has exactly the same fields, as Aljex sends the whole record each time. The order of each
tuple is the column order of the table's morning CSV.
"""

from __future__ import annotations

STOP_COUNT = 20
ACCESSORIAL_COUNT = 8
CHECK_CALL_COUNT = 8
EXTRA_REF_COUNT = 6
INVOICE_LINE_COUNT = 21

# Audit stamps on a load: key_<letter>_date/_time/_user. Aljex does not document the
# letters; this generator reads them as c=created, h=hauler (carrier) assigned, r=rate
# confirmation sent, d=dispatched, l=loaded, p=proof of delivery, w=last written.
AUDIT_STAMPS = ("c", "h", "l", "w", "d", "r", "p")


def numbered(pattern: str, count: int) -> tuple[str, ...]:
    """``pattern`` formatted with 1..count, e.g. ``numbered("ps_city_{}", 3)``."""
    return tuple(pattern.format(n) for n in range(1, count + 1))


def interleaved(patterns: str, count: int) -> tuple[str, ...]:
    """Each pattern for 1, then each for 2, ...: the order a stop or a line reads in."""
    return tuple(pattern.format(n) for n in range(1, count + 1) for pattern in patterns.split())


def names(*parts: str | tuple[str, ...]) -> tuple[str, ...]:
    """Field names in order, from space-separated strings and ready-made tuples."""
    fields: list[str] = []
    for part in parts:
        fields.extend(part.split() if isinstance(part, str) else part)
    return tuple(fields)


LOAD_FIELDS = names(
    """
    id status office customer_id customer_name billto_id billto_name sales_rep dispatcher
    booked_by mode equipment equipment_length commodity weight pieces pallets miles
    temp_min temp_max hazmat hazmat_class team bol_num po_num pickup_num delivery_num
    customer_ref seal_num
    origin_company origin_address origin_city origin_state origin_zip
    dest_company dest_address dest_city dest_state dest_zip
    pickup_date pickup_time must_del_date must_del_time delivery_date delivery_time
    carrier_id carrier_name carrier_mc carrier_phone carrier_contact
    driver_name driver_phone truck_num trailer_num
    rate_type line_haul fuel_surcharge invoice_total carrier_line_haul carrier_fuel
    carrier_total_rate margin margin_pct currency terms invoice_num invoice_date
    notes special_instructions Osd Tord tag_creation_date tag_created_by
    """,
    numbered("extra_ref_{}", EXTRA_REF_COUNT),
    numbered("accessorial{}", ACCESSORIAL_COUNT),
    numbered("accessorial_desc{}", ACCESSORIAL_COUNT),
    numbered("carrier_accessorial{}", ACCESSORIAL_COUNT),
    numbered("carrier_accessorial_desc{}", ACCESSORIAL_COUNT),
    tuple(f"key_{stamp}_{part}" for stamp in AUDIT_STAMPS for part in ("date", "time", "user")),
    interleaved(
        "ps{} ps_company_{} ps_address_{} ps_city_{} ps_state_{} ps_zip_{} ps_ref_{} "
        "ps_appt_date_{} ps_appt_time_{} ps_arrive_date_{} ps_arrive_time_{}",
        STOP_COUNT,
    ),
    interleaved(
        "check_call_date_{} check_call_time_{} check_call_city_{} check_call_state_{} "
        "check_call_status_{} check_call_note_{}",
        CHECK_CALL_COUNT,
    ),
)

CUSTOMER_FIELDS = names(
    "id name address1 address2 city state zip",
    numbered("phone{}", 3),
    numbered("email{}", 4),
    numbered("contact{}", 4),
    "type status sales_rep credit_limit total_exposure terms notes created_date",
)

CARRIER_FIELDS = names(
    "id name legal_name mc_num dot_num scac status carrier_type power_units",
    "address1 city state zip phone email contact",
    "liab_ins_company liab_ins_policy liab_ins_expires liab_ins_amount",
    "cargo_ins_company cargo_ins_policy cargo_ins_expires cargo_ins_amount",
    "pay_to_name pay_to_address1 pay_to_city pay_to_state pay_to_zip created_date",
)

EMPLOYEE_FIELDS = names("id name email team type phone status office")

SALESREP_FIELDS = names("id name email phone office team commission_pct status start_date")

INVOICE_FIELDS = names(
    "pro_num ref_num customer_id customer_name billto_name billto_address billto_city",
    "billto_state billto_zip ship_date del_date inv_date due_date terms status",
    interleaved("description{} amount{}", INVOICE_LINE_COUNT),
    "total balance proj_rev act_rev",
)

PAYMENT_FIELDS = names(
    "id carrier_id carrier_name pro_num payable_id check_num check_date amount pay_method",
    "memo created_date created_by",
)

PAYMENT_RECEIVED_FIELDS = names(
    "id customer_id customer_name pro_num check_num amount received_date deposit_date",
    "pay_method memo created_date created_by",
)

ADJUSTMENT_FIELDS = names("id customer_id pro_num amount reason memo created_date created_by")

QUOTE_FIELDS = names(
    "id customer_id customer_name origin_city origin_state origin_zip dest_city dest_state",
    "dest_zip equipment weight miles rate fuel_surcharge total quoted_by created_date",
    "expires_date status notes",
)

PAYABLE_FIELDS = names(
    "id carrier_id carrier_name pro_num carrier_invoice_num amount invoice_date due_date",
    "status approved_by created_date",
)

NEW_PURCHASE_FIELDS = names(
    "id vendor_name description amount purchase_date employee_id office gl_account",
    "created_date",
)

SPOT_FIELDS = names(
    "spot_number customer_id origin_city origin_state dest_city dest_state equipment",
    "weight rate posted_by created_date expires_date status notes",
)

FIELDS: dict[str, tuple[str, ...]] = {
    "employees": EMPLOYEE_FIELDS,
    "salesreps": SALESREP_FIELDS,
    "customers": CUSTOMER_FIELDS,
    "carriers": CARRIER_FIELDS,
    "loads": LOAD_FIELDS,
    "invoicing": INVOICE_FIELDS,
    "payments": PAYMENT_FIELDS,
    "payments_received": PAYMENT_RECEIVED_FIELDS,
    "debits": ADJUSTMENT_FIELDS,
    "credits": ADJUSTMENT_FIELDS,
    "quotes": QUOTE_FIELDS,
    "payable": PAYABLE_FIELDS,
    "new_purchases": NEW_PURCHASE_FIELDS,
    "spots": SPOT_FIELDS,
}

# Fields holding money: where the feeds' stray ":" may turn up.
MONEY_FIELDS: dict[str, tuple[str, ...]] = {
    "loads": names(
        "line_haul fuel_surcharge invoice_total carrier_line_haul carrier_fuel",
        "carrier_total_rate margin",
        numbered("accessorial{}", ACCESSORIAL_COUNT),
        numbered("carrier_accessorial{}", ACCESSORIAL_COUNT),
    ),
    "invoicing": names(numbered("amount{}", INVOICE_LINE_COUNT), "total balance proj_rev act_rev"),
    "customers": ("credit_limit", "total_exposure"),
    "payments": ("amount",),
    "payments_received": ("amount",),
    "debits": ("amount",),
    "credits": ("amount",),
    "payable": ("amount",),
    "quotes": ("rate", "fuel_surcharge", "total"),
    "new_purchases": ("amount",),
    "spots": ("rate",),
}
