"""Storage: one layer over SQLite (default) and PostgreSQL (scale-out), same migrations."""
