"""The console: the Audit Logs page of the HTTP port (static files in static/, the export download in export.py)."""
