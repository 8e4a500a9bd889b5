"""The money after delivery: invoices to customers and their payments, carriers' bills
(payables) and what was paid on them, debits and credits, and the office's own purchases."""

from __future__ import annotations

from datetime import datetime, timedelta

from .fields import ACCESSORIAL_COUNT, INVOICE_LINE_COUNT
from .values import cents, iso, money
from .vocabulary import CREDIT_REASONS, DEBIT_REASONS, PURCHASES, TERMS, VENDORS
from .world import Record, World


class Accounting:
    """Makes the money records and keeps each customer's exposure (open invoices) current."""

    def __init__(self, world: World) -> None:
        self.world = world

    def new_invoice(self, load: Record, at: datetime) -> Record:
        w = self.world
        customer = w.data["customers"][(load["customer_id"],)]
        due = at.date() + timedelta(days=TERMS.get(customer["terms"], 30))
        invoice = w.new("invoicing", pro_num=load["id"], ref_num=load["po_num"])
        invoice.update(customer_id=customer["id"], customer_name=customer["name"])
        invoice.update(billto_name=load["billto_name"], billto_address=customer["address1"])
        invoice.update(billto_city=customer["city"], billto_state=customer["state"])
        invoice.update(billto_zip=customer["zip"], terms=customer["terms"], status="OPEN")
        invoice.update(ship_date=load["pickup_date"], del_date=load["delivery_date"])
        invoice.update(inv_date=iso(at.date()), due_date=iso(due))
        lines = [("LINE HAUL", load["line_haul"]), ("FUEL SURCHARGE", load["fuel_surcharge"])]
        for n in range(1, ACCESSORIAL_COUNT + 1):
            if load[f"accessorial_desc{n}"]:
                lines.append((load[f"accessorial_desc{n}"], load[f"accessorial{n}"]))
        for n, (description, amount) in enumerate(lines[:INVOICE_LINE_COUNT], 1):
            invoice[f"description{n}"], invoice[f"amount{n}"] = description, amount
        total = money(sum(cents(amount) for _, amount in lines))
        invoice["total"] = invoice["balance"] = invoice["act_rev"] = total
        invoice["proj_rev"] = load["invoice_total"]
        w.maybe_colon("invoicing", invoice, 0.01)
        return invoice

    def add_invoice(self, invoice: Record, at: datetime) -> None:
        w = self.world
        w.store("invoicing", invoice, at)
        w.invoices.append(invoice["pro_num"])
        w.pools["open_invoices"].add(invoice["pro_num"])
        customer_id = invoice["customer_id"]
        w.exposure[customer_id] = w.exposure.get(customer_id, 0) + cents(invoice["total"])

    def settle_invoice(self, pro_num: str, at: datetime) -> Record:
        """Mark an invoice PAID, store it, and take it off its customer's exposure."""
        w = self.world
        invoice = w.get("invoicing", pro_num)
        invoice["balance"], invoice["status"] = "0.00", "PAID"
        w.store("invoicing", invoice, at)
        w.pools["open_invoices"].discard(pro_num)
        customer_id = invoice["customer_id"]
        w.exposure[customer_id] -= cents(w.data["invoicing"][(pro_num,)]["total"])
        return invoice

    def new_payable(self, load: Record, at: datetime) -> Record:
        w = self.world
        due = iso(at.date() + timedelta(days=30))
        payable = w.new("payable", id=w.next_id("payable"), pro_num=load["id"])
        payable.update(carrier_id=load["carrier_id"], carrier_name=load["carrier_name"])
        payable.update(carrier_invoice_num=f"INV{w.digits(5)}", status="OPEN")
        payable.update(amount=load["carrier_total_rate"], due_date=due)
        payable.update(invoice_date=iso(at.date()), created_date=iso(at.date()))
        payable.update(approved_by=w.rng.choice(w.employees))
        return payable

    def new_payment(self, payable: Record, at: datetime) -> Record:
        w = self.world
        payment = w.new("payments", id=w.next_id("payments"), payable_id=payable["id"])
        for name in ("carrier_id", "carrier_name", "pro_num", "amount"):
            payment[name] = payable[name]
        payment.update(check_num=w.digits(5), check_date=iso(at.date()))
        payment.update(pay_method=w.rng.choice(("CHECK", "ACH", "ACH", "QUICKPAY")))
        payment.update(memo=f"Pro {payable['pro_num']} / {payable['carrier_invoice_num']}")
        payment.update(created_date=iso(at.date()), created_by=w.rng.choice(w.employees))
        return payment

    def new_receipt(self, invoice: Record, at: datetime) -> Record:
        w = self.world
        receipt = w.new("payments_received", id=w.next_id("payments_received"))
        for name in ("customer_id", "customer_name", "pro_num"):
            receipt[name] = invoice[name]
        receipt.update(amount=invoice["balance"], check_num=w.digits(6))
        receipt.update(received_date=iso(at.date()), deposit_date=iso(at.date()))
        receipt.update(pay_method=w.rng.choice(("CHECK", "ACH", "WIRE")))
        receipt.update(memo=f"Remit {invoice['ref_num']}", created_date=iso(at.date()))
        receipt.update(created_by=w.rng.choice(w.employees))
        return receipt

    def new_adjustment(self, table: str, invoice: Record, at: datetime) -> Record:
        """A debit or credit against an invoice."""
        w = self.world
        reasons = DEBIT_REASONS if table == "debits" else CREDIT_REASONS
        adjustment = w.new(table, id=w.next_id(table), pro_num=invoice["pro_num"])
        adjustment.update(customer_id=invoice["customer_id"], memo=f"Pro {invoice['pro_num']}")
        adjustment.update(amount=money(w.rng.randint(25, 400) * 100))
        adjustment.update(reason=w.rng.choice(reasons), created_date=iso(at.date()))
        adjustment.update(created_by=w.rng.choice(w.employees))
        return adjustment

    def new_purchase(self, at: datetime) -> Record:
        w = self.world
        rng = w.rng
        employee = w.data["employees"][(rng.choice(w.employees),)]
        purchase = w.new("new_purchases", id=w.next_id("new_purchases"))
        purchase.update(vendor_name=rng.choice(VENDORS), description=rng.choice(PURCHASES))
        purchase.update(amount=money(rng.randint(500, 250_000)), purchase_date=iso(at.date()))
        purchase.update(employee_id=employee["id"], office=employee["office"])
        purchase.update(gl_account=rng.choice(("6100", "6200", "6350", "7010")))
        purchase.update(created_date=iso(at.date()))
        return purchase
