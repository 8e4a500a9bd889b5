"""The database side: dialects, identifiers, schema evolution, upserts and deletes.

Nothing under ``store/`` knows about HTTP or SFTP; it takes changes and files as data.
"""
