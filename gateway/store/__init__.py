"""Key stores: the KeyStore protocol and its SQLite (and PostgreSQL) implementations."""
