"""Aljex's side of the wire: a seeded brokerage, and a sender that plays Aljex against a receiver.

The brokerage (what Aljex holds)::

    brokerage.py    the facade: ground truth, the live feed, the morning files' contents
    world.py        the state its departments share: records, clock, seeded dice
    people.py, companies.py, loads.py, accounting.py, sales.py    one department each
    history.py      the past, laid down before the clock starts
    activity.py     the working day, one live change at a time
    fields.py, vocabulary.py, values.py    field names, words and places, value formats

The emulator (what Aljex sends, and a check of what arrived)::

    state.py        the JSON state file: what was sent, so runs continue and verify knows
    sender.py       Live Sync: form-urlencoded POSTs with Basic auth
    morning.py      Morning Sync: the CSV files, uploaded by SFTP
    verify.py       the oracle, compared with the receiver's database
    commands.py     ``aljex-sync emulate``

Everything here speaks only the wire and the files, as Aljex does; ``verify.py`` alone reads
the receiver's store.
"""
